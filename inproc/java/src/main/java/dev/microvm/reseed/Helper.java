package dev.microvm.reseed;

import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.lang.instrument.ClassFileTransformer;
import java.lang.instrument.Instrumentation;
import java.lang.invoke.MethodHandles;
import java.nio.charset.StandardCharsets;
import java.security.ProtectionDomain;
import java.security.SecureRandom;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashMap;
import java.util.HashSet;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ThreadLocalRandom;

/**
 * What the native helper's thread runs in this JVM ({@link Start}): {@link #start} prepares what
 * a generation reseeds ({@link Generators}, the {@code SecureRandom} hook) and warms the path;
 * {@link #generation} reseeds for each of the agent's generations and answers with what it did.
 */
final class Helper {
  /** Where this JVM's code may be reached for reflection: opened to this helper alone. */
  private static final String[] OPENED = {
    "java.lang", "java.security", "java.util", "java.util.concurrent", "sun.security.provider"
  };
  /** The methods {@link ClassPatch} hooks in {@code java.security.SecureRandom}. */
  static final Set<String> DRAWS =
      Collections.unmodifiableSet(
          new HashSet<>(
              Arrays.asList(
                  "nextBytes([B)V", "nextBytes([BLjava/security/SecureRandomParameters;)V")));

  /** Set once by {@link #start}, before the native helper's first generation (after the two below). */
  private static volatile Generators generators;

  private static boolean instances;
  private static long pid;

  private Helper() {}

  /** Prepares and warms; true when the JVM takes part. */
  static synchronized boolean start(Instrumentation inst) {
    if (generators != null) {
      return false; // once per JVM
    }
    instances = prepare(inst);
    pid = ProcessHandle.current().pid();
    // Warming reseeds decoys (Generators.decoys): its thread, in a group of its own, is the one
    // thread whose ThreadLocalRandom state it reseeds.
    ThreadGroup own = new ThreadGroup("microvm-reseed");
    // With a group inside it, as the JVM's root group has: enumerating goes the same way.
    new ThreadGroup(own, "microvm-reseed-none");
    Generators decoys = Generators.decoys(own);
    warm(decoys, instances);
    generators = Generators.app(); // publishes the two above
    Thread compile = new Thread(own, new Compile(decoys, instances), "microvm-reseed-warm");
    compile.setDaemon(true);
    compile.start();
    return true;
  }

  /** A generation of the agent's: the acknowledgement's words (ASCII). */
  static byte[] generation(long n, byte[] seed, byte[] fresh) {
    Generators g = generators;
    if (g == null) {
      Arrays.fill(seed, (byte) 0);
      return "none".getBytes(StandardCharsets.US_ASCII);
    }
    return answer(g, n, seed, fresh, REAL, instances, pid);
  }

  /**
   * A generation's kind, and its slot in {@link Registry}: the app's {@code SecureRandom}s follow
   * the real ones only; a warming round writes its own slot, by the same code.
   */
  static final int REAL = 0;

  static final int WARM = 1;

  /**
   * Runs a generation's whole path once, on decoys ({@link Generators#decoys}), with fresh
   * bytes of the process's own: a generation is then code the JVM has loaded, linked and seen,
   * not its first use of {@code MessageDigest}, the providers and reflection inside a hook's
   * budget (measured in a restored clone under emulation: a first generation ran past an 800 ms
   * deadline, warmed it did not).
   */
  static void warm(Generators decoys, boolean instances) {
    warm(decoys, instances, fresh(), fresh());
  }

  /**
   * One warming round with these bytes, through {@link #answer} as the agent's generations go
   * (the JIT compiles for what it has seen: code compiled for a warming path of its own was
   * thrown away at the first real generation and compiled again, measured as 2-9 ms at
   * `/resume`'s p99 with four JVMs), on the decoys: it never changes what the app draws, in the
   * VM that is snapshotted or in a clone before its generation (where it would make values
   * differ that are not reseeded, and a clone whose kernel was not reseeded reads the
   * snapshot's kernel stream).
   */
  static void warm(Generators decoys, boolean instances, byte[] own, byte[] fresh) {
    synchronized (decoys) {
      answer(decoys, WARM_NUMBER, own.clone(), fresh.clone(), WARM, instances, pid);
    }
  }

  /** A warming round's generation number: as many digits as the agent's early ones. */
  private static final long WARM_NUMBER = 7;

  /**
   * Reseeds every generator as generation `n` says (`slot`: {@link #REAL}, or {@link #WARM} for
   * a warming round) and returns what it reseeded, as the acknowledgement's words. Zeroes
   * `seed` and `fresh`.
   */
  static byte[] answer(
      Generators generators,
      long n,
      byte[] seed,
      byte[] fresh,
      int slot,
      boolean instances,
      long pid) {
    byte[] mix = Mix.mix(seed, pid, n, fresh);
    Arrays.fill(seed, (byte) 0);
    Arrays.fill(fresh, (byte) 0);
    String what;
    synchronized (generators) {
      what = generators.reseed(slot, mix, instances);
    }
    return what.getBytes(StandardCharsets.US_ASCII);
  }

  /**
   * In a JVM that is still running after a few seconds (a server, the kind a snapshot is taken
   * of), runs a generation's path a few thousand times more, in a thread of its own, so that the
   * JIT compiles all of it, to its last tier: a clone inherits the compiled code with the rest
   * of the snapshot. Measured with four JVMs on two cores: until about 3,000 generations had
   * run, the JIT's compilations of the path (four JVMs compiling at once) put `/resume`'s p99 at
   * 2-9 ms; after, at about 0.1 ms over the helpers off. A short-lived JVM ends before it starts.
   * Paced to at most a quarter of one core (under emulation a round is slow, and the rounds
   * spread out). On decoys, so it may run at any time: before the snapshot, in a clone, beside a
   * generation.
   */
  private static final class Compile implements Runnable {
    static final long AFTER_MS = 3000;
    static final int ROUNDS = 6000;
    private final Generators decoys;
    private final boolean instances;

    Compile(Generators decoys, boolean instances) {
      this.decoys = decoys;
      this.instances = instances;
    }

    @Override
    public void run() {
      try {
        Thread.sleep(AFTER_MS);
        Thread self = Thread.currentThread();
        for (int i = 0; i < ROUNDS; i++) {
          // This thread is the decoys' one thread: as having used ThreadLocalRandom on even
          // rounds and not on odd ones, so that both of a generation's cases for a thread run.
          if (i % 2 == 0) {
            ThreadLocalRandom.current();
          } else {
            decoys.forget(self);
          }
          long began = System.nanoTime();
          warm(decoys, instances);
          long took = (System.nanoTime() - began) / 1_000_000;
          Thread.sleep(Math.max(1, 3 * took)); // a background task, never a busy core
        }
      } catch (Throwable t) {
        // Nothing to undo.
      }
    }
  }

  /**
   * Opens what {@link Generators} reads to this helper, and hooks {@code SecureRandom}'s draws
   * ({@link Registry}, through the {@link Hook}); returns whether the hook is in.
   */
  private static boolean prepare(Instrumentation inst) {
    Module self = Helper.class.getModule();
    Module base = Object.class.getModule();
    try {
      Map<String, Set<Module>> opens = new HashMap<>();
      for (String p : OPENED) {
        opens.put(p, Collections.singleton(self));
      }
      inst.redefineModule(
          base,
          Collections.<Module>emptySet(),
          Collections.<String, Set<Module>>emptyMap(),
          opens,
          Collections.<Class<?>>emptySet(),
          Collections.<Class<?>, java.util.List<Class<?>>>emptyMap());
    } catch (Throwable t) {
      return false;
    }
    if (!inst.isRetransformClassesSupported()) {
      return false;
    }
    Registry.reseeded(); // loaded and initialised before any patched draw can call it
    try {
      // Linked and initialised first (waiting for the app's thread if it is doing it): a class
      // redefined while another thread links it crashed the JVM once in 400 short-lived JVMs
      // (SIGSEGV in the rewriter, JDK 17.0.15), as may one redefined while the JVM exits.
      Class.forName("java.security.SecureRandom", true, null);
      Runtime.getRuntime().addShutdownHook(new Thread(new Leaving(), "microvm-reseed-exit"));
      // The hook in java.security, live before any patched draw can reach it.
      defineHook(MethodHandles.privateLookupIn(SecureRandom.class, MethodHandles.lookup()), Hook.NAME)
          .getField("sink")
          .set(null, new Registry.Sink());
    } catch (Throwable t) {
      return false; // exiting already, or a JVM that refuses the hook: no patch
    }
    ClassFileTransformer patch = new SecureRandomPatch();
    synchronized (Leaving.LOCK) {
      if (Leaving.started) {
        return false;
      }
      try {
        inst.addTransformer(patch, true);
        inst.retransformClasses(SecureRandom.class);
        return SecureRandomPatch.applied;
      } catch (Throwable t) {
        // A JVM that refuses the class (it verifies it) keeps the one it had.
        return false;
      } finally {
        // Removed at once: a Java transformer is handed a copy of every class the JVM loads.
        inst.removeTransformer(patch);
      }
    }
  }

  /**
   * Defines a copy of the {@link Hook} template named {@code name}, in the package and loader
   * of {@code lookup}'s class (which must be {@code name}'s package).
   */
  static Class<?> defineHook(MethodHandles.Lookup lookup, String name) throws Exception {
    byte[] template;
    try (InputStream in = Hook.class.getResourceAsStream("Hook.class")) {
      template = in.readAllBytes();
    }
    byte[] bytes = ClassPatch.renamed(template, Hook.TEMPLATE, name);
    if (bytes == null) {
      throw new IllegalStateException("the hook template has no name to replace");
    }
    return lookup.defineClass(bytes);
  }

  /**
   * The JVM's exit waits for a redefinition in progress, and none starts after it began: a
   * shutdown hook (run by {@code System.exit} and by the end of {@code main} alike) takes the
   * lock the redefinition holds. {@code Runtime.halt} runs no hook and is not covered.
   */
  private static final class Leaving implements Runnable {
    static final Object LOCK = new Object();
    static boolean started;

    @Override
    public void run() {
      synchronized (LOCK) {
        started = true;
      }
    }
  }

  private static final class SecureRandomPatch implements ClassFileTransformer {
    static volatile boolean applied;

    @Override
    public byte[] transform(
        Module module,
        ClassLoader loader,
        String name,
        Class<?> redefined,
        ProtectionDomain domain,
        byte[] bytes) {
      if (loader != null || !"java/security/SecureRandom".equals(name)) {
        return null;
      }
      byte[] out = ClassPatch.insert(bytes, DRAWS, Hook.NAME);
      applied = out != null;
      return out;
    }
  }

  /** 32 bytes from the kernel, or two clock readings where it cannot be read. */
  static byte[] fresh() {
    byte[] b = new byte[32];
    try (InputStream in = new FileInputStream("/dev/urandom")) {
      int at = 0;
      while (at < b.length) {
        int n = in.read(b, at, b.length - at);
        if (n < 0) {
          break;
        }
        at += n;
      }
      if (at == b.length) {
        return b;
      }
    } catch (IOException e) {
      // Below.
    }
    long t = System.nanoTime();
    long w = System.currentTimeMillis();
    for (int i = 0; i < 8; i++) {
      b[i] = (byte) (t >>> (8 * i));
      b[8 + i] = (byte) (w >>> (8 * i));
    }
    return Arrays.copyOf(b, 16);
  }
}
