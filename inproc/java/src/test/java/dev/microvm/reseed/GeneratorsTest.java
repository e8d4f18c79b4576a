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
    Generators g = Generators.app();
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
    Generators.app().reseed(Helper.REAL, mix(9), false);
    assertEquals(Mix.derive64(mix(9), "ThreadLocalRandom", 0), seeder.get());
    // A new thread's first use takes the seeder's value (and moves it on).
    Thread t = new Thread(() -> ThreadLocalRandom.current().nextLong());
    t.start();
    t.join();
    assertNotEquals(Mix.derive64(mix(9), "ThreadLocalRandom", 0), seeder.get());
  }

  @Test
  void warming_never_changes_what_the_app_draws() throws Exception {
    Generators app = Generators.app();
    ThreadGroup own = new ThreadGroup("warm-test");
    Generators decoys = Generators.decoys(own);
    // A thread of the decoys' group that used ThreadLocalRandom, as the warming thread does.
    java.util.concurrent.CountDownLatch used = new java.util.concurrent.CountDownLatch(1);
    java.util.concurrent.CountDownLatch done = new java.util.concurrent.CountDownLatch(1);
    Thread t =
        new Thread(
            own,
            () -> {
              ThreadLocalRandom.current().nextInt();
              used.countDown();
              try {
                done.await();
              } catch (InterruptedException e) {
                // ends
              }
            });
    t.start();
    used.await();
    byte[] fresh = mix(8);
    // The agent's generation, answered as the native helper's call is.
    byte[] ack = Helper.answer(app, 1, mix(5), fresh.clone(), Helper.REAL, false, 42);
    assertEquals(
        "nativeprng,math.random,random,threadlocalrandom", new String(ack, StandardCharsets.US_ASCII));
    byte[] m = Mix.mix(mix(5), 42, 1, fresh);
    Random expected = new Random(Mix.derive64(m, "Math.random", 0));
    assertEquals(expected.nextDouble(), Math.random(), "the generation's seed");
    long seeder = ((AtomicLong) field(ThreadLocalRandom.class, "seeder").get(null)).get();
    long uniquifier = ((AtomicLong) field(Random.class, "seedUniquifier").get(null)).get();
    Thread self = Thread.currentThread();
    long mine = field(Thread.class, "threadLocalRandomSeed").getLong(self);
    for (int i = 0; i < 50; i++) {
      Helper.warm(decoys, false, mix(7), fresh);
    }
    assertEquals(expected.nextDouble(), Math.random(), "Math.random goes on from the generation");
    assertEquals(seeder, ((AtomicLong) field(ThreadLocalRandom.class, "seeder").get(null)).get());
    assertEquals(uniquifier, ((AtomicLong) field(Random.class, "seedUniquifier").get(null)).get());
    assertEquals(mine, field(Thread.class, "threadLocalRandomSeed").getLong(self), "an app thread");
    long decoySeed = field(Thread.class, "threadLocalRandomSeed").getLong(t);
    Helper.warm(decoys, false, mix(9), fresh);
    assertNotEquals(decoySeed, field(Thread.class, "threadLocalRandomSeed").getLong(t), "the decoys' thread is reseeded");
    done.countDown();
    t.join();
  }

  static Field field(Class<?> c, String name) throws Exception {
    Field f = c.getDeclaredField(name);
    f.setAccessible(true);
    return f;
  }




}
