package ai.deploytool;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Arrays;

/**
 * A tensor: an element type, a shape and row-major data in a direct {@link ByteBuffer}.
 *
 * <p>The model reads and writes the buffer's memory in place: a tensor made with {@link #wrap}
 * shares the caller's buffer, with no copy. Tensors made from {@code float[]}, {@code long[]} or
 * {@code int[]} copy the array once, into memory aligned to 64 bytes (which the runtime passes to
 * the model as it is; other memory is copied into an aligned staging buffer on each run).
 *
 * <p>A tensor is not synchronised: do not write to it while a run reads it, and do not pass the
 * same tensor as an output of two runs at once.
 */
public final class Tensor {
  static final int ALIGNMENT = 64;

  private final DType dtype;
  private final long[] shape;
  private final ByteBuffer data; // native byte order, position 0, capacity == nbytes

  private Tensor(DType dtype, long[] shape, ByteBuffer data) {
    this.dtype = dtype;
    this.shape = shape;
    this.data = data;
  }

  /** A zeroed tensor in new direct memory aligned to 64 bytes. */
  public static Tensor allocate(DType dtype, long... shape) {
    long[] dims = shape.clone();
    return new Tensor(dtype, dims, allocateAligned(byteSize(dtype, dims)));
  }

  /** A zeroed tensor with {@code info}'s dtype and shape, e.g. for an input or output. */
  public static Tensor allocate(TensorInfo info) {
    return allocate(info.dtype(), info.shape());
  }

  /** A float32 tensor holding a copy of {@code values}; no shape means one dimension. */
  public static Tensor of(float[] values, long... shape) {
    Tensor tensor = allocate(DType.FLOAT32, shapeFor(values.length, shape));
    tensor.view().asFloatBuffer().put(values);
    return tensor;
  }

  /** An int64 tensor holding a copy of {@code values}; no shape means one dimension. */
  public static Tensor of(long[] values, long... shape) {
    Tensor tensor = allocate(DType.INT64, shapeFor(values.length, shape));
    tensor.view().asLongBuffer().put(values);
    return tensor;
  }

  /** An int32 tensor holding a copy of {@code values}; no shape means one dimension. */
  public static Tensor of(int[] values, long... shape) {
    Tensor tensor = allocate(DType.INT32, shapeFor(values.length, shape));
    tensor.view().asIntBuffer().put(values);
    return tensor;
  }

  /**
   * A tensor over the bytes of a direct buffer, from its position on, without copying them.
   *
   * <p>The data must be in the machine's byte order. The buffer needs at least as many remaining
   * bytes as the tensor has; its position and limit are not changed.
   */
  public static Tensor wrap(ByteBuffer buffer, DType dtype, long... shape) {
    if (!buffer.isDirect()) {
      throw new DeploytoolException(DeploytoolException.ARGUMENT,
          "Tensor.wrap needs a direct ByteBuffer. Use ByteBuffer.allocateDirect or Tensor.allocate");
    }
    long[] dims = shape.clone();
    int nbytes = byteSize(dtype, dims);
    if (buffer.remaining() < nbytes) {
      throw new DeploytoolException(DeploytoolException.ARGUMENT, "the buffer has "
          + buffer.remaining() + " bytes left but a " + dtype + " " + Arrays.toString(dims)
          + " tensor needs " + nbytes);
    }
    ByteBuffer slice = buffer.slice();
    slice.limit(nbytes);
    return new Tensor(dtype, dims, slice.slice().order(ByteOrder.nativeOrder()));
  }

  public DType dtype() {
    return dtype;
  }

  /** The shape (a copy). */
  public long[] shape() {
    return shape.clone();
  }

  public long numElements() {
    return count(shape);
  }

  public long nbytes() {
    return data.capacity();
  }

  /** A view of the data (shared, not copied) in the machine's byte order, at position 0. */
  public ByteBuffer buffer() {
    return view();
  }

  /** A copy of the data as floats; the tensor must be float32. */
  public float[] toFloatArray() {
    expect(DType.FLOAT32);
    float[] values = new float[(int) numElements()];
    view().asFloatBuffer().get(values);
    return values;
  }

  /** A copy of the data as longs; the tensor must be int64. */
  public long[] toLongArray() {
    expect(DType.INT64);
    long[] values = new long[(int) numElements()];
    view().asLongBuffer().get(values);
    return values;
  }

  /** A copy of the data as ints; the tensor must be int32. */
  public int[] toIntArray() {
    expect(DType.INT32);
    int[] values = new int[(int) numElements()];
    view().asIntBuffer().get(values);
    return values;
  }

  @Override
  public String toString() {
    return "Tensor(" + dtype + " " + Arrays.toString(shape) + ")";
  }

  ByteBuffer data() {
    return data;
  }

  /** Checks that this tensor can stand for {@code info}; {@code what} names it in the message. */
  void check(TensorInfo info, String what, boolean writable) {
    if (dtype != info.dtype() || !Arrays.equals(shape, info.shape())) {
      throw new DeploytoolException(DeploytoolException.ARGUMENT, what + " '" + info.name()
          + "' needs " + info.dtype() + " " + Arrays.toString(info.shape()) + ", got " + dtype + " "
          + Arrays.toString(shape));
    }
    if (writable && data.isReadOnly()) {
      throw new DeploytoolException(DeploytoolException.ARGUMENT,
          what + " '" + info.name() + "' is a read-only buffer");
    }
  }

  static long count(long[] shape) {
    long count = 1;
    for (long dim : shape) {
      if (dim < 0) {
        throw new DeploytoolException(DeploytoolException.ARGUMENT,
            "negative dimension in shape " + Arrays.toString(shape));
      }
      count = Math.multiplyExact(count, dim);
    }
    return count;
  }

  private ByteBuffer view() {
    return data.duplicate().order(ByteOrder.nativeOrder());
  }

  private void expect(DType wanted) {
    if (dtype != wanted) {
      throw new DeploytoolException(DeploytoolException.ARGUMENT,
          "the tensor is " + dtype + ", not " + wanted);
    }
  }

  private static long[] shapeFor(int length, long[] shape) {
    long[] dims = shape.length == 0 ? new long[] {length} : shape.clone();
    if (count(dims) != length) {
      throw new DeploytoolException(DeploytoolException.ARGUMENT, length
          + " values do not fill shape " + Arrays.toString(dims));
    }
    return dims;
  }

  private static int byteSize(DType dtype, long[] shape) {
    long bytes = Math.multiplyExact(count(shape), (long) dtype.size());
    if (bytes > Integer.MAX_VALUE - ALIGNMENT) {
      throw new DeploytoolException(DeploytoolException.ARGUMENT,
          "a tensor of " + bytes + " bytes is too large for a ByteBuffer");
    }
    return (int) bytes;
  }

  private static ByteBuffer allocateAligned(int nbytes) {
    ByteBuffer raw = ByteBuffer.allocateDirect(nbytes + ALIGNMENT - 1);
    int offset = raw.alignmentOffset(0, ALIGNMENT);
    raw.position(offset == 0 ? 0 : ALIGNMENT - offset);
    raw.limit(raw.position() + nbytes);
    return raw.slice().order(ByteOrder.nativeOrder());
  }
}
