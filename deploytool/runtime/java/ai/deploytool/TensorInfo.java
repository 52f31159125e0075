package ai.deploytool;

import java.nio.charset.StandardCharsets;
import java.util.Arrays;

/** The name, element type and shape of one input or output of a model. Immutable. */
public final class TensorInfo {
  private final String name;
  private final DType dtype;
  private final long[] shape;
  private final long nbytes;

  TensorInfo(String name, DType dtype, long[] shape, long nbytes) {
    this.name = name;
    this.dtype = dtype;
    this.shape = shape.clone();
    this.nbytes = nbytes;
  }

  // Called from the JNI library with dt_tensor_info's fields.
  static TensorInfo fromNative(byte[] name, byte[] dtype, long[] shape, long nbytes) {
    return new TensorInfo(new String(name, StandardCharsets.UTF_8),
        DType.fromName(new String(dtype, StandardCharsets.UTF_8)), shape, nbytes);
  }

  public String name() {
    return name;
  }

  public DType dtype() {
    return dtype;
  }

  /** The shape (a copy). */
  public long[] shape() {
    return shape.clone();
  }

  /** The number of elements: the product of the shape. */
  public long numElements() {
    return Tensor.count(shape);
  }

  /** The size of the tensor's data in bytes. */
  public long nbytes() {
    return nbytes;
  }

  @Override
  public String toString() {
    return name + ": " + dtype + " " + Arrays.toString(shape);
  }
}
