package dev.microvm.reseed;

import java.lang.instrument.Instrumentation;

/**
 * microvm-agent's in-process reseed for Java: a Java agent ({@code -javaagent}) that the agent's
 * native helper adds to {@code JDK_JAVA_OPTIONS} in every {@code java} launcher of the app whose
 * runtime has {@code java.instrument} (inproc/java/README.md says why there and not in the
 * image's environment).
 *
 * <p>{@code premain} runs before the app's {@code main}, on its thread: it only starts one daemon
 * thread ({@link Helper}) and returns. Nothing here may stop the JVM from starting (a {@code
 * premain} that throws ends the JVM): every failure leaves the JVM as it was. The class is
 * compiled for Java 9 (the first whose launcher reads {@code JDK_JAVA_OPTIONS}); the helper needs
 * Unix sockets (Java 16) and does nothing on older JVMs.
 */
public final class Premain {
  private Premain() {}

  public static void premain(String args, Instrumentation inst) {
    try {
      String path = System.getenv("MICROVM_AGENT_INPROC");
      if (path == null || path.isEmpty() || feature() < 16) {
        return;
      }
      Thread t = new Thread(new Helper(path, inst), "microvm-reseed");
      t.setDaemon(true);
      t.start();
    } catch (Throwable t) {
      // The JVM starts as it would without us.
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
