package dev.microvm.agent;

import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.Random;

/**
 * The app the tests run under the real agent: a Random it keeps, two callbacks ({@code ok},
 * {@code throw}, {@code hang}), suspend and terminate, each writing what it saw under the
 * directory given.
 */
public final class TestApp {
  static Path out;

  static void write(String name, String text) {
    try {
      Files.writeString(out.resolve(name), text + "\n", StandardOpenOption.CREATE, StandardOpenOption.APPEND);
    } catch (java.io.IOException e) {
      throw new RuntimeException(e);
    }
  }

  public static void main(String[] args) throws Exception {
    String mode = args[0];
    out = Path.of(args[1]);
    Random rng = new Random(1);
    MicroVmAgent.onNewGeneration(g -> {
      MicroVmAgent.reseed(rng);
      write("order", "first");
    });
    MicroVmAgent.onNewGeneration(g -> {
      write("order", "second");
      write("generations", g.number() + "_" + g.id() + "_" + (g.processSeed() != null));
      write("draws", Long.toString(rng.nextLong()));
      if (g.deadline() != null) {
        write("budgets", Long.toString(java.time.Duration.between(java.time.Instant.now(), g.deadline()).toMillis()));
      }
      if ("run".equals(g.reason())) {
        if (mode.equals("throw")) throw new IllegalStateException("the app's callback broke");
        if (mode.equals("hang")) Thread.sleep(60_000);
      }
    });
    MicroVmAgent.onSuspend(g -> write("events", "suspend_" + g.number()));
    MicroVmAgent.onTerminate(g -> write("events", "terminate_" + g.number()));
    write("started", "yes");
    Thread.sleep(Long.MAX_VALUE);
  }
}
