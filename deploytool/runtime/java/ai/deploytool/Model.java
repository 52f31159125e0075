package ai.deploytool;

import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.locks.ReentrantReadWriteLock;

/**
 * A loaded deploytool package, run through the C API ({@code include/deploytool.h}) over JNI.
 *
 * <pre>{@code
 * try (Model model = Model.load(Paths.get("artifacts/mlp"))) {
 *   Tensor x = Tensor.of(new float[512], 1, 512);
 *   float[] y = model.run(x).get(0).toFloatArray();
 * }
 * }</pre>
 *
 * <p>Thread-safety: a model may be shared by threads. Runs on one model are serialised by the C
 * API's lock, so they take turns; load one model per thread to run in parallel. Models running at
 * once share the CPU cores fairly (see {@link #load(Path, String, int)}). {@link #close}
 * waits for runs in progress, and a closed model throws on use.
 */
public final class Model implements AutoCloseable {
  private final ReentrantReadWriteLock lock = new ReentrantReadWriteLock();
  private final Path packageDir;
  private final List<TensorInfo> inputs;
  private final List<TensorInfo> outputs;
  private long handle;

  private Model(Path packageDir, long handle) {
    this.packageDir = packageDir;
    this.handle = handle;
    this.inputs = Collections.unmodifiableList(Arrays.asList(NativeApi.infos(handle, false)));
    this.outputs = Collections.unmodifiableList(Arrays.asList(NativeApi.infos(handle, true)));
  }

  /** Loads the package in folder {@code packageDir} onto its own device (CPU, or cuda:0). */
  public static Model load(Path packageDir) {
    return load(packageDir, "");
  }

  /**
   * Loads the package in folder {@code packageDir} onto {@code device} ("cpu", "cpu:0", "cuda:N";
   * "" means the package's own device).
   *
   * @throws DeploytoolException with the C API's message when the folder is not a package, is
   *     corrupted, or was compiled for features this machine lacks
   */
  public static Model load(Path packageDir, String device) {
    return load(packageDir, device, 0);
  }

  /**
   * Loads the package onto {@code device} with at most {@code threads} CPU threads per run (0: all
   * the cores, TVM_NUM_THREADS or the physical cores). While several models run at once in the
   * process, each run takes an equal share of the cores (dt_load_ex, DT_SHARE_FAIR).
   *
   * @throws DeploytoolException as {@link #load(Path, String)}, and for a negative thread count
   */
  public static Model load(Path packageDir, String device, int threads) {
    NativeApi.ensureLoaded();
    long handle = NativeApi.load(NativeApi.cString(NativeApi.pathText(packageDir)),
        NativeApi.cString(device), threads);
    try {
      return new Model(packageDir, handle);
    } catch (RuntimeException error) {
      NativeApi.free(handle);
      throw error;
    }
  }

  /** The package folder this model was loaded from. */
  public Path packageDir() {
    return packageDir;
  }

  /** The inputs, in the order positional runs take them. */
  public List<TensorInfo> inputs() {
    return inputs;
  }

  /** The outputs, in the order positional runs return them. */
  public List<TensorInfo> outputs() {
    return outputs;
  }

  /** Runs the model on its inputs in order; returns new output tensors in order. */
  public List<Tensor> run(Tensor... inputs) {
    return run(Arrays.asList(inputs));
  }

  /** Runs the model on its inputs in order; returns new output tensors in order. */
  public List<Tensor> run(List<Tensor> inputs) {
    List<Tensor> results = new ArrayList<>();
    for (TensorInfo info : outputs) {
      results.add(Tensor.allocate(info));
    }
    run(inputs, results);
    return results;
  }

  /** Runs the model on inputs by name; returns the outputs by name, in the model's order. */
  public Map<String, Tensor> run(Map<String, Tensor> inputs) {
    Set<String> unknown = new HashSet<>(inputs.keySet());
    List<Tensor> ordered = new ArrayList<>();
    for (TensorInfo info : this.inputs) {
      Tensor tensor = inputs.get(info.name());
      if (tensor == null) {
        throw new DeploytoolException(DeploytoolException.ARGUMENT,
            "no tensor for input '" + info.name() + "'. The model's inputs are " + names(this.inputs));
      }
      unknown.remove(info.name());
      ordered.add(tensor);
    }
    if (!unknown.isEmpty()) {
      throw new DeploytoolException(DeploytoolException.ARGUMENT, "the model has no input named '"
          + unknown.iterator().next() + "'. Its inputs are " + names(this.inputs));
    }
    List<Tensor> results = run(ordered);
    Map<String, Tensor> named = new LinkedHashMap<>();
    for (int i = 0; i < outputs.size(); i++) {
      named.put(outputs.get(i).name(), results.get(i));
    }
    return named;
  }

  /**
   * Runs the model, writing into caller-owned output tensors (no allocation, no copy): inputs and
   * outputs in the model's order, each with the dtype and shape of its {@link TensorInfo}.
   */
  public void run(List<Tensor> inputs, List<Tensor> outputs) {
    ByteBuffer[] in = buffers(inputs, this.inputs, "input", false);
    ByteBuffer[] out = buffers(outputs, this.outputs, "output", true);
    lock.readLock().lock();
    try {
      NativeApi.run(checkOpen(), in, out);
    } finally {
      lock.readLock().unlock();
    }
  }

  /** Frees the model; waits for runs in progress. Later calls throw. Idempotent. */
  @Override
  public void close() {
    lock.writeLock().lock();
    try {
      if (handle != 0) {
        NativeApi.free(handle);
        handle = 0;
      }
    } finally {
      lock.writeLock().unlock();
    }
  }

  @Override
  public String toString() {
    return "Model(" + packageDir + ", inputs " + inputs + ", outputs " + outputs + ")";
  }

  private long checkOpen() {
    if (handle == 0) {
      throw new DeploytoolException(DeploytoolException.ARGUMENT, "the model is closed");
    }
    return handle;
  }

  private static ByteBuffer[] buffers(List<Tensor> tensors, List<TensorInfo> infos, String what,
      boolean writable) {
    if (tensors.size() != infos.size()) {
      throw new DeploytoolException(DeploytoolException.ARGUMENT, "the model takes "
          + infos.size() + " " + what + "s " + names(infos) + ", got " + tensors.size());
    }
    ByteBuffer[] buffers = new ByteBuffer[tensors.size()];
    for (int i = 0; i < buffers.length; i++) {
      Tensor tensor = tensors.get(i);
      if (tensor == null) {
        throw new DeploytoolException(DeploytoolException.ARGUMENT,
            what + " '" + infos.get(i).name() + "' is null");
      }
      tensor.check(infos.get(i), what, writable);
      buffers[i] = tensor.data();
    }
    return buffers;
  }

  private static List<String> names(List<TensorInfo> infos) {
    List<String> names = new ArrayList<>();
    for (TensorInfo info : infos) {
      names.add(info.name());
    }
    return names;
  }
}
