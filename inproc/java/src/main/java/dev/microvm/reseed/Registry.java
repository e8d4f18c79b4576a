package dev.microvm.reseed;

import java.security.SecureRandom;
import java.util.Map;
import java.util.WeakHashMap;
import java.util.concurrent.atomic.AtomicReferenceArray;
import java.util.function.Consumer;

/**
 * The {@code SecureRandom} objects of the app, reseeded at their first draw after each
 * generation. {@link ClassPatch} puts a call to the {@link Hook} at the start of {@code
 * SecureRandom.nextBytes}, and the hook calls {@link #drew} ({@link Sink}), so a {@code DRBG} or {@code SHA1PRNG} the app made before the snapshot
 * (and perhaps never drew from then) is reseeded before it gives a byte in a clone. The ones
 * that are {@code NativePRNG} share one state, reseeded once per generation ({@link
 * Generators}), and are passed over at the cost of a string comparison.
 *
 * <p>Harmless by construction: it never throws into the app's draw, it holds its own lock only
 * to look an object up (never while calling into a generator: a generator's reseed may draw from
 * another, whose draw comes here), and before the first generation it costs one volatile read.
 */
public final class Registry {
  private Registry() {}

  /** A generation as objects are reseeded for it: its mix, and its place in the order. */
  private static final class Current {
    final byte[] key;
    final long epoch;

    Current(byte[] key, long epoch) {
      this.key = key;
      this.epoch = epoch;
    }
  }

  /**
   * The last generation of each kind ({@link Helper#REAL}, {@link Helper#WARM}), null before the
   * first; one object each, so a draw never reads one generation's key with another's epoch.
   * Draws follow the real one only: a warming round writes its own slot, by the same code.
   */
  private static final AtomicReferenceArray<Current> CURRENT = new AtomicReferenceArray<>(2);
  /** The epoch each object was last reseeded for (weak: never keeps one alive). */
  private static final Map<Object, Long> SEEN = new WeakHashMap<>();
  private static long reseeded;

  /**
   * A new generation in `slot`: for {@link Helper#REAL}, every object is reseeded at its next
   * draw. Called under the generators' lock (one writer).
   */
  static void generation(int slot, byte[] mix) {
    Current last = CURRENT.get(slot);
    CURRENT.set(slot, new Current(mix, last == null ? 1 : last.epoch + 1));
  }

  /** How many objects were reseeded: each one's seed is derived with its own count. */
  static synchronized long reseeded() {
    return reseeded;
  }

  /** What the {@link Hook} calls: a class, not a lambda (no method-handle machinery to start). */
  static final class Sink implements Consumer<Object> {
    @Override
    public void accept(Object random) {
      drew(random);
    }
  }

  /** Called by the patched {@code SecureRandom.nextBytes}, through the hook, before the draw. */
  static void drew(Object random) {
    Current now = CURRENT.get(Helper.REAL);
    if (now == null || !(random instanceof SecureRandom)) {
      return;
    }
    try {
      SecureRandom r = (SecureRandom) random;
      if (r.getAlgorithm().startsWith("NativePRNG")) {
        return;
      }
      long n = now.epoch;
      long count;
      synchronized (Registry.class) {
        Long last = SEEN.get(r);
        if (last != null && last == n) {
          return;
        }
        SEEN.put(r, n);
        count = ++reseeded;
      }
      // Outside the lock (see above); the object's own lock is taken by setSeed as the app's
      // own setSeed would.
      r.setSeed(Mix.derive(now.key, "SecureRandom", count));
    } catch (Throwable t) {
      // The app's draw goes on with the generator as it was.
    }
  }
}
