import ai.deploytool.Model;
import ai.deploytool.Tensor;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;

/**
 * Several packages in one JVM, a thread each, all at once: java TogetherCheck THREADS RUNS TOL
 * DATA PACKAGE... loads every package with Model.load(dir, "", THREADS) and runs each RUNS times
 * on DATA/in{p}.bin, comparing output 0 with DATA/out{p}.bin (float32, little-endian). Prints
 * "<package> <runs within TOL>/<RUNS>" per package; exits 1 on any difference or failure.
 */
public final class TogetherCheck {
  public static void main(String[] args) throws Exception {
    int threads = Integer.parseInt(args[0]);
    int runs = Integer.parseInt(args[1]);
    double tolerance = Double.parseDouble(args[2]);
    Path data = Paths.get(args[3]);
    int count = args.length - 4;
    List<Model> models = new ArrayList<>();
    int[] passed = new int[count];
    List<Throwable> failures = java.util.Collections.synchronizedList(new ArrayList<>());
    List<Thread> workers = new ArrayList<>();
    for (int p = 0; p < count; p++) {
      models.add(Model.load(Paths.get(args[4 + p]), "", threads));
    }
    for (int p = 0; p < count; p++) {
      final int id = p;
      Thread worker = new Thread(() -> {
        try {
          Model model = models.get(id);
          float[] input = readFloats(data.resolve("in" + id + ".bin"));
          float[] expected = readFloats(data.resolve("out" + id + ".bin"));
          for (int r = 0; r < runs; r++) {
            float[] got = model.run(Tensor.of(input, model.inputs().get(0).shape())).get(0)
                .toFloatArray();
            passed[id] += within(got, expected, tolerance) ? 1 : 0;
          }
        } catch (Throwable error) {
          failures.add(error);
        }
      });
      workers.add(worker);
      worker.start();
    }
    for (Thread worker : workers) {
      worker.join();
    }
    boolean ok = failures.isEmpty();
    for (int p = 0; p < count; p++) {
      System.out.println(args[4 + p] + " " + passed[p] + "/" + runs);
      ok = ok && passed[p] == runs;
      models.get(p).close();
    }
    for (Throwable failure : failures) {
      failure.printStackTrace();
    }
    System.exit(ok ? 0 : 1);
  }

  static boolean within(float[] got, float[] expected, double tolerance) {
    if (got.length != expected.length) {
      return false;
    }
    for (int i = 0; i < got.length; i++) {
      if (!(Math.abs(got[i] - expected[i]) <= tolerance * (1 + Math.abs(expected[i])))) {
        return false;
      }
    }
    return true;
  }

  static float[] readFloats(Path path) throws Exception {
    ByteBuffer bytes = ByteBuffer.wrap(Files.readAllBytes(path)).order(ByteOrder.LITTLE_ENDIAN);
    float[] values = new float[bytes.remaining() / 4];
    bytes.asFloatBuffer().get(values);
    return values;
  }
}
