package ai.deploytool;

/** Element types of tensors, named as in the package manifest ("float32", "int64", ...). */
public enum DType {
  FLOAT32("float32", 4),
  FLOAT64("float64", 8),
  FLOAT16("float16", 2),
  INT64("int64", 8),
  INT32("int32", 4),
  INT16("int16", 2),
  INT8("int8", 1),
  UINT8("uint8", 1),
  BOOL("bool", 1);

  private final String name;
  private final int size;

  DType(String name, int size) {
    this.name = name;
    this.size = size;
  }

  /** The manifest's name of this type, e.g. "float32". */
  public String typeName() {
    return name;
  }

  /** Bytes per element. */
  public int size() {
    return size;
  }

  /** The type with the manifest's name {@code name}. */
  public static DType fromName(String name) {
    for (DType type : values()) {
      if (type.name.equals(name)) {
        return type;
      }
    }
    throw new DeploytoolException(DeploytoolException.ARGUMENT, "unknown dtype '" + name + "'");
  }

  @Override
  public String toString() {
    return name;
  }
}
