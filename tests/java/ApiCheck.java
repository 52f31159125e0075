// Test harness for tests/test_java.py: drives ai.deploytool from Java, prints what it checked.
//   java ApiCheck threads PACKAGE DATA_DIR THREADS RUNS TOLERANCE
//     Every thread t runs the shared model RUNS times on DATA_DIR/in{t}_{i}.bin (float32, raw,
//     little-endian), through four call styles in turn, and compares each result with
//     DATA_DIR/out{t}_{i}.bin. Prints one summary line; exits 1 if any result is off.
//   java ApiCheck api PACKAGE
//     Checks tensor conversions, argument errors and close(); prints "ok NAME" or "FAIL NAME: ...".

import ai.deploytool.DType;
import ai.deploytool.DeploytoolException;
import ai.deploytool.Model;
import ai.deploytool.Tensor;
import ai.deploytool.TensorInfo;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CyclicBarrier;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;

public final class ApiCheck {
  public static void main(String[] args) throws Exception {
    if (args[0].equals("threads")) {
      System.exit(threads(Paths.get(args[1]), Paths.get(args[2]), Integer.parseInt(args[3]),
          Integer.parseInt(args[4]), Double.parseDouble(args[5])));
    }
    System.exit(api(Paths.get(args[1])));
  }

  static float[] readFloats(Path path) throws Exception {
    ByteBuffer bytes = ByteBuffer.wrap(Files.readAllBytes(path)).order(ByteOrder.LITTLE_ENDIAN);
    float[] values = new float[bytes.remaining() / 4];
    bytes.asFloatBuffer().get(values);
    return values;
  }

  static int threads(Path pkg, Path data, int threads, int runs, double tolerance)
      throws Exception {
    AtomicInteger checked = new AtomicInteger();
    AtomicInteger mismatches = new AtomicInteger();
    AtomicInteger varied = new AtomicInteger();
    AtomicLong maxErrorBits = new AtomicLong(Double.doubleToLongBits(0));
    List<Throwable> failures = java.util.Collections.synchronizedList(new ArrayList<>());
    try (Model model = Model.load(pkg)) {
      List<TensorInfo> ins = model.inputs();
      List<TensorInfo> outs = model.outputs();
      CyclicBarrier barrier = new CyclicBarrier(threads);
      List<Thread> workers = new ArrayList<>();
      for (int t = 0; t < threads; t++) {
        final int id = t;
        Thread worker = new Thread(() -> {
          try {
            float[][] inputs = new float[ins.size()][];
            float[][] expected = new float[outs.size()][];
            for (int i = 0; i < ins.size(); i++) {
              inputs[i] = readFloats(data.resolve("in" + id + "_" + i + ".bin"));
            }
            for (int i = 0; i < outs.size(); i++) {
              expected[i] = readFloats(data.resolve("out" + id + "_" + i + ".bin"));
            }
            float[][] first = null;
            for (int r = 0; r < runs; r++) {
              barrier.await(); // every thread calls run at the same moment
              float[][] got = runOnce(model, inputs, (id + r) % 4);
              for (int i = 0; i < got.length; i++) {
                for (int k = 0; k < got[i].length; k++) {
                  double error = Math.abs(got[i][k] - expected[i][k]);
                  maxErrorBits.accumulateAndGet(Double.doubleToLongBits(error),
                      (a, b) -> Double.longBitsToDouble(a) >= Double.longBitsToDouble(b) ? a : b);
                  if (!(error <= tolerance) || got[i].length != expected[i].length) {
                    mismatches.incrementAndGet();
                  }
                }
                checked.incrementAndGet();
              }
              if (first == null) {
                first = got;
              } else if (!Arrays.deepEquals(first, got)) {
                varied.incrementAndGet();
              }
            }
          } catch (Throwable error) {
            failures.add(error);
            barrier.reset();
          }
        });
        workers.add(worker);
        worker.start();
      }
      for (Thread worker : workers) {
        worker.join();
      }
    }
    for (Throwable failure : failures) {
      failure.printStackTrace();
    }
    System.out.println("threads=" + threads + " runs=" + threads * runs + " checked="
        + checked.get() + " mismatches=" + mismatches.get() + " varied=" + varied.get()
        + " max_abs_err=" + Double.longBitsToDouble(maxErrorBits.get())
        + " failures=" + failures.size());
    return failures.isEmpty() && mismatches.get() == 0 && varied.get() == 0 ? 0 : 1;
  }

  // One run in one of four styles: float[] positional, aligned direct buffers into caller
  // outputs, unaligned direct buffers (the C API stages them), and by name.
  static float[][] runOnce(Model model, float[][] inputs, int style) {
    List<TensorInfo> ins = model.inputs();
    List<TensorInfo> outs = model.outputs();
    List<Tensor> tensors = new ArrayList<>();
    for (int i = 0; i < inputs.length; i++) {
      long[] shape = ins.get(i).shape();
      if (style == 0 || style == 3) {
        tensors.add(Tensor.of(inputs[i], shape));
      } else {
        int offset = style == 1 ? 0 : 1;
        ByteBuffer raw = ByteBuffer.allocateDirect(inputs[i].length * 4 + 64 + offset);
        int pad = (64 - raw.alignmentOffset(0, 64)) % 64 + offset;
        raw.position(pad);
        ByteBuffer view = raw.slice().order(ByteOrder.nativeOrder());
        view.asFloatBuffer().put(inputs[i]);
        tensors.add(Tensor.wrap(view, DType.FLOAT32, shape));
      }
    }
    List<Tensor> results;
    if (style == 1 || style == 2) {
      results = new ArrayList<>();
      for (TensorInfo info : outs) {
        results.add(Tensor.allocate(info));
      }
      model.run(tensors, results);
    } else if (style == 3) {
      Map<String, Tensor> named = new HashMap<>();
      for (int i = 0; i < ins.size(); i++) {
        named.put(ins.get(i).name(), tensors.get(i));
      }
      results = new ArrayList<>(model.run(named).values());
    } else {
      results = model.run(tensors.toArray(new Tensor[0]));
    }
    float[][] values = new float[results.size()][];
    for (int i = 0; i < values.length; i++) {
      values[i] = results.get(i).toFloatArray();
    }
    return values;
  }

  interface Check {
    String run() throws Exception;
  }

  static int failed = 0;

  static void check(String name, Check body) {
    try {
      String problem = body.run();
      System.out.println(problem == null ? "ok " + name : "FAIL " + name + ": " + problem);
      failed += problem == null ? 0 : 1;
    } catch (Throwable error) {
      System.out.println("FAIL " + name + ": " + error);
      failed++;
    }
  }

  // The message of the DeploytoolException that body throws, with its code.
  static String thrown(Runnable body) {
    try {
      body.run();
    } catch (DeploytoolException error) {
      return error.code() + " " + error.getMessage();
    }
    return "nothing thrown";
  }

  static String expect(String got, String wanted) {
    return got.equals(wanted) ? null : "got <" + got + ">, wanted <" + wanted + ">";
  }

  static int api(Path pkg) throws Exception {
    Model model = Model.load(pkg);
    TensorInfo in = model.inputs().get(0);
    System.out.println("inputs " + model.inputs());
    System.out.println("outputs " + model.outputs());
    check("long[] round trip", () -> {
      long[] values = {Long.MIN_VALUE, -1, 0, 7, Long.MAX_VALUE, 1L << 40};
      Tensor t = Tensor.of(values, 2, 3);
      return Arrays.equals(t.toLongArray(), values) && t.dtype() == DType.INT64
          && t.nbytes() == 48 ? null : "differs";
    });
    check("int[] round trip", () -> {
      int[] values = {Integer.MIN_VALUE, -5, 0, 9, Integer.MAX_VALUE};
      Tensor t = Tensor.of(values);
      return Arrays.equals(t.toIntArray(), values) && Arrays.equals(t.shape(), new long[] {5})
          ? null : "differs";
    });
    check("float[] round trip", () -> {
      float[] values = {Float.MIN_VALUE, -0.0f, 1.5f, Float.NaN, Float.MAX_VALUE, 3e-7f};
      return Arrays.equals(Tensor.of(values, 3, 2).toFloatArray(), values) ? null : "differs";
    });
    check("allocate is 64-byte aligned", () -> {
      for (int n = 1; n < 200; n += 37) {
        if (Tensor.allocate(DType.INT8, n).buffer().alignmentOffset(0, 64) != 0) {
          return "offset for " + n + " bytes";
        }
      }
      return null;
    });
    check("wrap shares memory", () -> {
      ByteBuffer direct = ByteBuffer.allocateDirect(16).order(ByteOrder.nativeOrder());
      Tensor t = Tensor.wrap(direct, DType.FLOAT32, 4);
      direct.putFloat(8, 2.5f);
      return t.toFloatArray()[2] == 2.5f ? null : "a write to the buffer is not seen";
    });
    check("outputs written in place", () -> {
      ByteBuffer out = ByteBuffer.allocateDirect((int) model.outputs().get(0).nbytes());
      Tensor result = Tensor.wrap(out, model.outputs().get(0).dtype(),
          model.outputs().get(0).shape());
      model.run(Arrays.asList(Tensor.allocate(in)), Arrays.asList(result));
      float[] values = result.toFloatArray();
      float seen = out.order(ByteOrder.nativeOrder()).getFloat(0);
      return values[0] == seen && values[0] != 0.0f ? null : "the caller's buffer was not written";
    });
    check("shape does not fill", () -> expect(thrown(() -> Tensor.of(new float[5], 2, 3)),
        "1 5 values do not fill shape [2, 3]"));
    check("heap buffer refused", () -> expect(
        thrown(() -> Tensor.wrap(ByteBuffer.allocate(16), DType.FLOAT32, 4)),
        "1 Tensor.wrap needs a direct ByteBuffer. Use ByteBuffer.allocateDirect or Tensor.allocate"));
    check("wrong dtype", () -> expect(
        thrown(() -> model.run(Tensor.allocate(DType.INT64, in.shape()))),
        "1 input '" + in.name() + "' needs float32 " + Arrays.toString(in.shape())
            + ", got int64 " + Arrays.toString(in.shape())));
    check("wrong count", () -> expect(thrown(() -> model.run()),
        "1 the model takes 1 inputs [" + in.name() + "], got 0"));
    check("unknown name", () -> {
      Map<String, Tensor> named = new HashMap<>();
      named.put(in.name(), Tensor.allocate(in));
      named.put("nope", Tensor.allocate(in));
      return expect(thrown(() -> model.run(named)),
          "1 the model has no input named 'nope'. Its inputs are [" + in.name() + "]");
    });
    check("unknown device", () -> expect(thrown(() -> Model.load(pkg, "gpu")),
        "1 unknown device 'gpu'. Use cpu, cpu:N, cuda or cuda:N"));
    check("close while threads run", () -> {
      List<Thread> workers = new ArrayList<>();
      List<String> endings = java.util.Collections.synchronizedList(new ArrayList<>());
      for (int t = 0; t < 4; t++) {
        Thread worker = new Thread(() -> endings.add(thrown(() -> {
          while (true) {
            model.run(Tensor.allocate(in));
          }
        })));
        workers.add(worker);
        worker.start();
      }
      Thread.sleep(300);
      model.close();
      model.close(); // idempotent
      for (Thread worker : workers) {
        worker.join();
      }
      for (String ending : endings) {
        if (!ending.equals("1 the model is closed")) {
          return "a thread ended with " + ending;
        }
      }
      return endings.size() == 4 ? null : endings.size() + " threads ended";
    });
    System.out.println(failed == 0 ? "all passed" : failed + " failed");
    return failed == 0 ? 0 : 1;
  }
}
