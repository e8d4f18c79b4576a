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
  /** One instance of each NativePRNG variant this platform has (made once: a provider lookup is
   *  not work for a hook's time). */
  private final SecureRandom[] natives;
  private static final String[] VARIANTS = {"NativePRNG", "NativePRNGBlocking", "NativePRNGNonBlocking"};

  Generators() {
    java.util.List<SecureRandom> found = new java.util.ArrayList<>();
    for (String variant : VARIANTS) {
      try {
        found.add(SecureRandom.getInstance(variant));
      } catch (Throwable t) {
        // Not on this platform (not Linux, or no /dev/random).
      }
    }
    natives = found.toArray(new SecureRandom[0]);
    mathRandom = field("java.lang.Math$RandomNumberGeneratorHolder", "randomNumberGenerator");
    uniquifier = field("java.util.Random", "seedUniquifier");
    splittable = field("java.util.SplittableRandom", "defaultGen");
    seeder = field("java.util.concurrent.ThreadLocalRandom", "seeder");
    threadSeed = field("java.lang.Thread", "threadLocalRandomSeed");
    threadProbe = field("java.lang.Thread", "threadLocalRandomProbe");
  }

  private static Field field(String type, String name) {
    try {
      Field f = Class.forName(type, false, null).getDeclaredField(name);
      f.setAccessible(true);
      return f;
    } catch (Throwable t) {
      return null;
    }
  }

  /**
   * The last generation's mix of each kind ({@link Helper#REAL}, {@link Helper#WARM}; null
   * before the first), and how many warming rounds ran: {@link Helper}'s, under this object's
   * lock.
   */
  final byte[][] mixes = new byte[2][];

  long warmed;

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
      for (Thread t : threads()) {
        // A thread that never used ThreadLocalRandom (probe 0) takes its seed from the seeder.
        if (threadProbe.getInt(t) != 0) {
          threadSeed.setLong(t, Mix.derive64(mix, "ThreadLocalRandom", t.getId()));
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

  /** Every live platform thread, from the root thread group. */
  static Thread[] threads() {
    ThreadGroup g = Thread.currentThread().getThreadGroup();
    while (g.getParent() != null) {
      g = g.getParent();
    }
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
