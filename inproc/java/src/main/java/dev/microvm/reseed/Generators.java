package dev.microvm.reseed;

import java.lang.reflect.Field;
import java.security.SecureRandom;
import java.util.Random;
import java.util.concurrent.atomic.AtomicLong;

/**
 * What a JVM keeps as cloned state, reseeded for each generation from the mix (each item its
 * own derived value):
 *
 * <ul>
 *   <li>{@code nativeprng}: the state every {@code NativePRNG} shares (its output is a SHA1PRNG
 *       "mix" XOR bytes of {@code /dev/urandom}, so it is cloned wherever the kernel was not
 *       reseeded); {@code setSeed} on any instance reseeds it. That is {@code new
 *       SecureRandom()} on Linux, TLS's default {@code SSLContext} and {@code
 *       UUID.randomUUID()}.
 *   <li>{@code securerandom}: every other {@code SecureRandom} ({@code DRBG}, {@code SHA1PRNG}),
 *       at its next draw ({@link Registry}).
 *   <li>{@code math.random}: {@code Math.random()}'s one {@code Random}.
 *   <li>{@code random}: the "uniquifier" every {@code new Random()} starts from, and {@code
 *       SplittableRandom}'s default generator.
 *   <li>{@code threadlocalrandom}: {@code ThreadLocalRandom}'s seeder and the seed of every live
 *       thread that used it.
 * </ul>
 *
 * The private fields are found once, at start, by name; a JVM without one of them (another
 * version) reseeds the rest and does not name it in its acknowledgement.
 */
final class Generators {
  private final Field mathRandom;
  private final Field uniquifier;
  private final Field splittable;
  private final Field seeder;
  private final Field threadSeed;
  private final Field threadProbe;
  /** One instance of each NativePRNG variant this platform has ({@link #natives()}). */
  private final SecureRandom[] natives;

  /** Whose threads a generation reseeds: the root group (every thread), or the decoys' own. */
  private final ThreadGroup group;

  /** The app's generators, which a generation reseeds. */
  static Generators app() {
    ThreadGroup g = Thread.currentThread().getThreadGroup();
    while (g.getParent() != null) {
      g = g.getParent();
    }
    return new Generators(false, g);
  }

  /**
   * Private copies of each generator ({@link Decoys}, and the threads of `group`), which
   * warming reseeds by the very code a generation runs, so that it never changes what the app
   * draws. (`NativePRNG`'s state is one per JVM: warming adds to it, as {@code setSeed} does,
   * and takes nothing away.)
   */
  static Generators decoys(ThreadGroup group) {
    return new Generators(true, group);
  }

  private Generators(boolean decoys, ThreadGroup group) {
    this.group = group;
    natives = natives();
    if (decoys) {
      mathRandom = field(Decoys.class, "MATH_RANDOM");
      uniquifier = field(Decoys.class, "UNIQUIFIER");
      splittable = field(Decoys.class, "SPLITTABLE");
      seeder = field(Decoys.class, "SEEDER");
    } else {
      mathRandom = field(type("java.lang.Math$RandomNumberGeneratorHolder"), "randomNumberGenerator");
      uniquifier = field(Random.class, "seedUniquifier");
      splittable = field(type("java.util.SplittableRandom"), "defaultGen");
      seeder = field(type("java.util.concurrent.ThreadLocalRandom"), "seeder");
    }
    threadSeed = field(Thread.class, "threadLocalRandomSeed");
    threadProbe = field(Thread.class, "threadLocalRandomProbe");
  }

  /**
   * One instance of each NativePRNG variant, made once and shared by the app's generators and the
   * decoys (the variants share one state per JVM anyway): a provider lookup is not work for a
   * hook's time, nor worth doing twice at start.
   */
  private static SecureRandom[] shared;

  private static synchronized SecureRandom[] natives() {
    if (shared == null) {
      java.util.List<SecureRandom> found = new java.util.ArrayList<>();
      for (String variant : new String[] {"NativePRNG", "NativePRNGBlocking", "NativePRNGNonBlocking"}) {
        try {
          found.add(SecureRandom.getInstance(variant));
        } catch (Throwable t) {
          // Not on this platform (not Linux, or no /dev/random).
        }
      }
      shared = found.toArray(new SecureRandom[0]);
    }
    return shared;
  }

  /**
   * The decoys: fields of the types and modifiers of the JDK's (static final), so that reading
   * them takes the same paths through reflection.
   */
  static final class Decoys {
    private Decoys() {}

    static final Random MATH_RANDOM = new Random(0); // a seed given: no draw on the uniquifier
    private static final AtomicLong UNIQUIFIER = new AtomicLong();
    private static final AtomicLong SPLITTABLE = new AtomicLong();
    private static final AtomicLong SEEDER = new AtomicLong();
  }

  private static Class<?> type(String name) {
    try {
      return Class.forName(name, false, null);
    } catch (Throwable t) {
      return null;
    }
  }

  private static Field field(Class<?> type, String name) {
    try {
      Field f = type.getDeclaredField(name);
      f.setAccessible(true);
      return f;
    } catch (Throwable t) {
      return null;
    }
  }

  /** A thread's `ThreadLocalRandom` state as never used (warming's own thread, on alternate rounds). */
  void forget(Thread t) {
    try {
      threadProbe.setInt(t, 0);
    } catch (Throwable e) {
      // Not this JVM's layout: the round reseeds it anyway.
    }
  }

  /** Reseeds everything; returns what, comma-separated (the acknowledgement's words). */
  String reseed(int slot, byte[] mix, boolean instances) {
    StringBuilder done = new StringBuilder();
    int native_ = 0;
    for (SecureRandom r : natives) {
      try {
        r.setSeed(Mix.derive(mix, r.getAlgorithm(), 0));
        native_++;
      } catch (Throwable t) {
        // Its /dev/random could not be written: its own state is still reseeded, or nothing is.
      }
    }
    if (native_ > 0) {
      add(done, "nativeprng");
    }
    if (instances) {
      Registry.generation(slot, mix);
      add(done, "securerandom");
    }
    try {
      ((Random) mathRandom.get(null)).setSeed(Mix.derive64(mix, "Math.random", 0));
      add(done, "math.random");
    } catch (Throwable t) {
      // Not this JVM's layout.
    }
    try {
      ((AtomicLong) uniquifier.get(null)).set(Mix.derive64(mix, "Random", 0));
      ((AtomicLong) splittable.get(null)).set(Mix.derive64(mix, "SplittableRandom", 0));
      add(done, "random");
    } catch (Throwable t) {
      // As above.
    }
    try {
      ((AtomicLong) seeder.get(null)).set(Mix.derive64(mix, "ThreadLocalRandom", 0));
      Thread[] all = threads();
      for (int i = 0; i < all.length; i++) {
        // A thread that never used ThreadLocalRandom (probe 0) takes its seed from the seeder.
        // Each its own value by its place in the list (no call on the thread: its class varies,
        // and the JIT would compile for the classes warming saw).
        if (threadProbe.getInt(all[i]) != 0) {
          threadSeed.setLong(all[i], Mix.derive64(mix, "ThreadLocalRandom", i + 1));
        }
      }
      add(done, "threadlocalrandom");
    } catch (Throwable t) {
      // As above.
    }
    return done.length() == 0 ? "none" : done.toString();
  }

  private static void add(StringBuilder b, String what) {
    if (b.length() > 0) {
      b.append(',');
    }
    b.append(what);
  }

  /** Every live platform thread of this object's group. */
  Thread[] threads() {
    ThreadGroup g = group;
    Thread[] all = new Thread[g.activeCount() + 16];
    int n;
    while ((n = g.enumerate(all, true)) == all.length) {
      all = new Thread[all.length * 2];
    }
    Thread[] out = new Thread[n];
    System.arraycopy(all, 0, out, 0, n);
    return out;
  }
}
