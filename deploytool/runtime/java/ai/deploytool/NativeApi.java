package ai.deploytool;

import java.net.URISyntaxException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.security.CodeSource;

/**
 * The JNI library (lib/libdeploytool_jni.so) and its functions, one per C API function.
 *
 * <p>The library is found, in order: at the path in the system property {@code deploytool.jni};
 * at {@code ../lib/libdeploytool_jni.so} beside the jar this class was loaded from (a package's
 * {@code java/deploytool.jar}); on {@code java.library.path}.
 */
final class NativeApi {
  static final String LIBRARY = "deploytool_jni";

  private static boolean loaded;

  private NativeApi() {}

  static synchronized void ensureLoaded() {
    if (loaded) {
      return;
    }
    String explicit = System.getProperty("deploytool.jni");
    Path besideJar = besideJar();
    try {
      if (explicit != null && !explicit.isEmpty()) {
        System.load(Paths.get(explicit).toAbsolutePath().toString());
      } else if (besideJar != null && Files.isRegularFile(besideJar)) {
        System.load(besideJar.toString());
      } else {
        System.loadLibrary(LIBRARY);
      }
    } catch (UnsatisfiedLinkError error) {
      throw new DeploytoolException(DeploytoolException.PLATFORM, "cannot load the deploytool JNI "
          + "library (" + error.getMessage() + "). Keep java/deploytool.jar inside its package, or "
          + "set -Ddeploytool.jni=/path/to/package/lib/libdeploytool_jni.so");
    }
    loaded = true;
  }

  private static Path besideJar() {
    try {
      CodeSource source = NativeApi.class.getProtectionDomain().getCodeSource();
      if (source == null) {
        return null;
      }
      Path location = Paths.get(source.getLocation().toURI());
      if (!Files.isRegularFile(location) || location.getParent() == null
          || location.getParent().getParent() == null) {
        return null;
      }
      return location.getParent().getParent().resolve("lib")
          .resolve(System.mapLibraryName(LIBRARY));
    } catch (URISyntaxException | SecurityException | IllegalArgumentException error) {
      return null;
    }
  }

  static byte[] cString(String text) {
    byte[] utf8 = text.getBytes(StandardCharsets.UTF_8);
    byte[] terminated = new byte[utf8.length + 1];
    System.arraycopy(utf8, 0, terminated, 0, utf8.length);
    return terminated;
  }

  static String pathText(Path path) {
    return path.toString().isEmpty() ? "." : path.toString();
  }

  /** dt_load_ex with dt_options.threads; returns the dt_model pointer or throws DeploytoolException. */
  static native long load(byte[] packageDir, byte[] device, int threads);

  /** dt_free. */
  static native void free(long model);

  /** dt_input_info or dt_output_info for every input or output. */
  static native TensorInfo[] infos(long model, boolean outputs);

  /** dt_run over the addresses of direct buffers; throws DeploytoolException. */
  static native void run(long model, ByteBuffer[] inputs, ByteBuffer[] outputs);
}
