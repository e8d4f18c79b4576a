package dev.microvm.reseed;

import java.lang.instrument.Instrumentation;
import java.nio.charset.StandardCharsets;

/**
 * microvm-agent's in-process reseed for Java: a Java agent that the agent's native helper loads
 * into every JVM of the app whose runtime has {@code java.instrument}, after the JVM has started,
 * and then drives from its own thread (inproc/java/README.md says how and why). The native
 * helper speaks the agent's protocol; this side reseeds what only Java code can reach.
 *
 * <p>The three entry points are the native helper's, called in this order on its thread (a
 * daemon Java thread named {@code microvm-reseed}). None of them throws, and every failure leaves
 * the JVM as it was.
 */
public final class Start {
  private Start() {}

  private static volatile Instrumentation inst;

  private static final byte[] NONE = "none".getBytes(StandardCharsets.US_ASCII);

  /** Run by the JVM when the native helper loads this jar: keeps the instrumentation. */
  public static void agentmain(String args, Instrumentation instrumentation) {
    inst = instrumentation;
  }

  /**
   * Prepares what a generation reseeds and warms its path (see {@link Helper}); true when this
   * JVM takes part. Java 16 and later: the versions this is tested on, from 17, and the one
   * before.
   */
  public static boolean ready() {
    try {
      Instrumentation i = inst;
      return i != null && feature() >= 16 && Helper.start(i);
    } catch (Throwable t) {
      return false;
    }
  }

  /**
   * A generation: its number, the agent's 32 bytes for this process and 32 fresh bytes of the
   * native helper's (zeroed here once used). Returns the acknowledgement's words.
   */
  public static byte[] generation(long n, byte[] seed, byte[] fresh) {
    try {
      return Helper.generation(n, seed, fresh);
    } catch (Throwable t) {
      return NONE;
    }
  }

  /** This JVM's feature release (9, 17, 21...). */
  static int feature() {
    String v = System.getProperty("java.specification.version", "");
    try {
      return Integer.parseInt(v);
    } catch (NumberFormatException e) {
      return 0; // "1.8" and older
    }
  }
}
