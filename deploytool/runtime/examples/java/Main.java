// Load a deploytool package, run it once and print its outputs. No Python involved.
// Usage: java -cp java/deploytool.jar:build/java Main PACKAGE_DIR [INPUT.npy ...]
//        (inputs in the model's order; default: all 0.5)

import ai.deploytool.DType;
import ai.deploytool.DeploytoolException;
import ai.deploytool.Model;
import ai.deploytool.Tensor;
import ai.deploytool.TensorInfo;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

public final class Main {
  public static void main(String[] args) {
    if (args.length < 1) {
      System.err.println("usage: java Main PACKAGE_DIR [INPUT.npy ...]");
      System.exit(2);
    }
    try (Model model = Model.load(Paths.get(args[0]))) {
      List<Tensor> inputs = new ArrayList<>();
      for (int i = 0; i < model.inputs().size(); i++) {
        TensorInfo info = model.inputs().get(i);
        if (i + 1 < args.length) {
          inputs.add(readNpy(Paths.get(args[i + 1]), info));
        } else if (info.dtype() == DType.FLOAT32) {
          float[] halves = new float[(int) info.numElements()];
          Arrays.fill(halves, 0.5f);
          inputs.add(Tensor.of(halves, info.shape()));
        } else {
          inputs.add(Tensor.allocate(info));
        }
      }
      List<Tensor> outputs = model.run(inputs);
      for (int i = 0; i < outputs.size(); i++) {
        System.out.println(model.outputs().get(i).name() + ":" + format(outputs.get(i)));
      }
    } catch (DeploytoolException | IOException error) {
      System.err.println("error: " + error);
      System.exit(1);
    }
  }

  // Up to 16 values, each printed exactly (Float.toString round-trips).
  static String format(Tensor tensor) {
    StringBuilder text = new StringBuilder();
    long count = tensor.numElements();
    ByteBuffer data = tensor.buffer();
    for (int k = 0; k < count && k < 16; k++) {
      switch (tensor.dtype()) {
        case FLOAT32: text.append(' ').append(data.getFloat(4 * k)); break;
        case INT64: text.append(' ').append(data.getLong(8 * k)); break;
        case INT32: text.append(' ').append(data.getInt(4 * k)); break;
        default: return " (" + tensor.nbytes() + " bytes of " + tensor.dtype() + ")";
      }
    }
    return count > 16 ? text + " ... (" + count + " values)" : text.toString();
  }

  // Reads a little-endian, C-order .npy file straight into a tensor's direct buffer.
  static Tensor readNpy(Path path, TensorInfo info) throws IOException {
    try (FileChannel file = FileChannel.open(path)) {
      ByteBuffer prefix = ByteBuffer.allocate(10).order(ByteOrder.LITTLE_ENDIAN);
      readFully(file, prefix, path);
      if (prefix.get(0) != (byte) 0x93 || prefix.get(1) != 'N' || prefix.get(6) < 1) {
        throw new IOException(path + " is not a .npy file");
      }
      int headerLength = prefix.getShort(8) & 0xffff;
      if (prefix.get(6) > 1) { // version 2 and 3: a 4-byte header length
        ByteBuffer rest = ByteBuffer.allocate(2).order(ByteOrder.LITTLE_ENDIAN);
        readFully(file, rest, path);
        headerLength = ByteBuffer.allocate(4).order(ByteOrder.LITTLE_ENDIAN)
            .putShort(prefix.getShort(8)).put(rest.array()).getInt(0);
      }
      ByteBuffer header = ByteBuffer.allocate(headerLength);
      readFully(file, header, path);
      String text = new String(header.array(), StandardCharsets.ISO_8859_1);
      String descr = field(text, "'descr':\\s*'([^']*)'");
      String shape = field(text, "'shape':\\s*\\(([^)]*)\\)").replaceAll("[\\s,]+$", "");
      String wanted = Arrays.toString(info.shape()).replaceAll("[\\[\\]]", "");
      if (!descr.equals(descrOf(info.dtype())) || !shape.replaceAll("\\s", "").equals(
          wanted.replaceAll("\\s", "")) || text.contains("'fortran_order': True")) {
        throw new IOException(path + " holds " + descr + " (" + shape + ") but input '"
            + info.name() + "' needs " + info.dtype() + " " + Arrays.toString(info.shape()));
      }
      Tensor tensor = Tensor.allocate(info);
      readFully(file, tensor.buffer(), path);
      return tensor;
    }
  }

  static String descrOf(DType dtype) {
    switch (dtype) {
      case FLOAT32: return "<f4";
      case FLOAT64: return "<f8";
      case FLOAT16: return "<f2";
      case INT64: return "<i8";
      case INT32: return "<i4";
      case INT16: return "<i2";
      case INT8: return "|i1";
      case UINT8: return "|u1";
      default: return "|b1";
    }
  }

  static String field(String header, String regex) throws IOException {
    Matcher match = Pattern.compile(regex).matcher(header);
    if (!match.find()) {
      throw new IOException("unreadable .npy header: " + header.trim());
    }
    return match.group(1);
  }

  static void readFully(FileChannel file, ByteBuffer buffer, Path path) throws IOException {
    while (buffer.hasRemaining()) {
      if (file.read(buffer) < 0) {
        throw new IOException(path + " is shorter than its header says");
      }
    }
  }
}
