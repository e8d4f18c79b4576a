package dev.microvm.reseed;

import java.lang.instrument.Instrumentation;

/**
 * microvm-agent's in-process reseed for Java: a Java agent that the agent's native helper loads
 * into every JVM of the app whose runtime has {@code java.instrument}, after the JVM has started
 * (inproc/java/README.md says how, and why not with {@code -javaagent}).
 *
 * <p>{@code agentmain} runs on the native helper's thread, beside the app's {@code main}: it only
 * starts one daemon thread ({@link Helper}) and returns. Nothing here may disturb the JVM: every
 * failure leaves it as it was. The class is compiled for Java 9 (the first whose launcher reads
 * {@code JDK_JAVA_OPTIONS}); the helper needs Unix sockets (Java 16) and does nothing on older
 * JVMs.
 */
public final class Start {
  private Start() {}

  public static void agentmain(String args, Instrumentation inst) {
    try {
      String path = System.getenv("MICROVM_AGENT_INPROC");
      if (path == null || path.isEmpty() || feature() < 16) {
        return;
      }
      Thread t = new Thread(new Helper(path, inst), "microvm-reseed");
      t.setDaemon(true);
      t.start();
    } catch (Throwable t) {
      // The JVM goes on as it would without us.
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
