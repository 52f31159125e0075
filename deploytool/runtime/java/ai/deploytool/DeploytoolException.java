package ai.deploytool;

import java.nio.charset.StandardCharsets;

/**
 * An error from deploytool: the C API's code and message, or a bad argument caught in Java.
 *
 * <p>The codes are the C API's ({@code DT_ERR_*} in {@code include/deploytool.h}).
 */
public class DeploytoolException extends RuntimeException {
  private static final long serialVersionUID = 1L;

  /** A bad argument: wrong tensor count, dtype or size, a closed model, an unknown device. */
  public static final int ARGUMENT = 1;
  /** Not a package, or an unreadable or corrupted one. */
  public static final int PACKAGE = 2;
  /** This machine cannot run the package (CPU features, architecture, native library). */
  public static final int PLATFORM = 3;
  /** The model failed while running. */
  public static final int RUN = 4;

  private final int code;

  public DeploytoolException(int code, String message) {
    super(message);
    this.code = code;
  }

  /** The C API's error code: {@link #ARGUMENT}, {@link #PACKAGE}, {@link #PLATFORM} or {@link #RUN}. */
  public int code() {
    return code;
  }

  // Called from the JNI library with dt_last_error()'s bytes (UTF-8).
  static DeploytoolException fromNative(int code, byte[] message) {
    return new DeploytoolException(code, new String(message, StandardCharsets.UTF_8));
  }
}
