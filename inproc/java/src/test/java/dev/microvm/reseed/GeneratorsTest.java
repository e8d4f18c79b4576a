package dev.microvm.reseed;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;

import java.lang.reflect.Field;
import java.nio.charset.StandardCharsets;
import java.util.Random;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.atomic.AtomicLong;
import org.junit.jupiter.api.Test;

/**
 * What a generation does to this JVM's generators, judged by what they draw next: the same mix
 * gives the same next values (the helper's bytes are what seeds them), another mix other values.
 */
class GeneratorsTest {
  static byte[] mix(int b) {
    byte[] m = new byte[32];
    m[0] = (byte) b;
    return m;
  }

  @Test
  void every_generator_it_names_is_seeded_from_the_mix() {
    // This thread has used ThreadLocalRandom (else its first use takes a seed from the seeder,
    // the other test's case).
    ThreadLocalRandom.current().nextInt();
    Generators g = new Generators();
    assertEquals(
        "nativeprng,math.random,random,threadlocalrandom", g.reseed(Helper.REAL, mix(1), false));
    double math = Math.random();
    long tlr = ThreadLocalRandom.current().nextLong();
    assertEquals(new Random(Mix.derive64(mix(1), "Math.random", 0)).nextDouble(), math);

    g.reseed(Helper.REAL, mix(1), false);
    assertEquals(math, Math.random(), "the same mix: the same next draw");
    assertEquals(tlr, ThreadLocalRandom.current().nextLong());

    g.reseed(Helper.REAL, mix(2), false);
    assertNotEquals(math, Math.random(), "another mix: another draw");
    assertNotEquals(tlr, ThreadLocalRandom.current().nextLong());
  }

  @Test
  void a_thread_that_never_used_thread_local_random_takes_its_seed_from_the_mixs_seeder()
      throws Exception {
    Field f = ThreadLocalRandom.class.getDeclaredField("seeder");
    f.setAccessible(true);
    AtomicLong seeder = (AtomicLong) f.get(null);
    new Generators().reseed(Helper.REAL, mix(9), false);
    assertEquals(Mix.derive64(mix(9), "ThreadLocalRandom", 0), seeder.get());
    // A new thread's first use takes the seeder's value (and moves it on).
    Thread t = new Thread(() -> ThreadLocalRandom.current().nextLong());
    t.start();
    t.join();
    assertNotEquals(Mix.derive64(mix(9), "ThreadLocalRandom", 0), seeder.get());
  }

  @Test
  void warming_after_a_real_generation_stays_derived_from_it() {
    // Two clones of one process whose kernel was not reseeded: the same "fresh" bytes in both.
    byte[] own = mix(7), fresh = mix(8);
    double[] drawn = new double[3];
    int[] seeds = {5, 6, 5};
    for (int i = 0; i < 3; i++) {
      Generators g = new Generators();
      Helper.warm(g, false, own, fresh); // before any generation: the process's own bytes
      // The agent's generation, answered as the native helper's call is.
      byte[] ack = Helper.answer(g, 1, mix(seeds[i]), fresh.clone(), Helper.REAL, false, 42);
      assertEquals(
          "nativeprng,math.random,random,threadlocalrandom",
          new String(ack, StandardCharsets.US_ASCII));
      byte[] m = Mix.mix(mix(seeds[i]), 42, 1, fresh);
      Random expected = new Random(Mix.derive64(m, "Math.random", 0));
      assertEquals(expected.nextDouble(), Math.random(), "the generation's seed");
      Helper.warm(g, false, own, fresh);
      drawn[i] = Math.random();
    }
    assertNotEquals(drawn[0], drawn[1], "warmed after two generations: still two streams");
    assertEquals(drawn[0], drawn[2], "and nothing but the generation and the bytes counts");
  }



}
