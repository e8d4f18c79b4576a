package dev.microvm.reseed;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.InputStream;
import java.lang.invoke.MethodHandles;
import java.nio.ByteBuffer;
import java.security.Provider;
import java.security.SecureRandom;
import java.security.SecureRandomSpi;
import java.util.Set;
import org.junit.jupiter.api.Test;

/**
 * The class-file patch, on classes the JVM then verifies and runs: a {@code SecureRandom} of the
 * test's own shaped like the JDK's (a synchronized block, so an exception table and stack-map
 * frames; a long run of code before the first frame, so that frame's offset no longer fits its
 * short form), and the JDK's own {@code java.security.SecureRandom}, whose bytes it must accept.
 */
class ClassPatchTest {
  static byte[] bytesOf(Class<?> c) throws Exception {
    String name = c.getName().replace('.', '/') + ".class";
    try (InputStream in = c.getModule().getResourceAsStream(name)) {
      return in.readAllBytes();
    }
  }

  /** Loads `bytes` as the class `name`, in a loader of its own (so the JVM verifies it). */
  static Class<?> define(String name, byte[] bytes) {
    return new ClassLoader(ClassPatchTest.class.getClassLoader()) {
      Class<?> go() {
        return defineClass(name, bytes, 0, bytes.length);
      }
    }.go();
  }

  /** The hook as the helper defines it in java.security, here in this test's package. */
  static final String TEST_HOOK = "dev/microvm/reseed/TestHook";

  static Class<?> testHook;

  static synchronized void defineTestHook() throws Exception {
    if (testHook == null) {
      testHook = Helper.defineHook(MethodHandles.lookup(), TEST_HOOK);
      testHook.getField("sink").set(null, new Registry.Sink());
    }
  }

  @Test
  void the_patched_class_is_valid_and_every_draw_reaches_the_registry_first() throws Exception {
    defineTestHook();
    assertEquals(TEST_HOOK.replace('/', '.'), testHook.getName(), "the copy has its new name");
    assertNull(ClassPatch.renamed(bytesOf(Object.class), Hook.TEMPLATE, TEST_HOOK), "nothing to rename");
    byte[] original = bytesOf(Sample.class);
    byte[] patched = ClassPatch.insert(original, Set.of("nextBytes([B)V"), TEST_HOOK);
    assertNotNull(patched, "the patch applies");
    assertNull(ClassPatch.insert(patched, Set.of("nextBytes([B)V"), TEST_HOOK), "and only once");
    Class<?> c = define(Sample.class.getName(), patched);
    SecureRandom r = (SecureRandom) c.getConstructor().newInstance();
    byte[] b = new byte[8];
    r.nextBytes(b);
    assertEquals(0, c.getField("seeds").getInt(r), "before any generation: nothing");
    Registry.generation(Helper.REAL, new byte[32]);
    r.nextBytes(b);
    r.nextBytes(b);
    assertEquals(1, c.getField("seeds").getInt(r), "reseeded once per generation, at its first draw");
    Registry.generation(Helper.REAL, new byte[32]);
    r.nextBytes(b);
    assertEquals(2, c.getField("seeds").getInt(r));
    // The method's own code still runs, after the call.
    assertEquals(4, c.getField("draws").getInt(r));
  }

  @Test
  void the_hook_goes_into_java_security_beside_secure_random() throws Exception {
    // What the helper does in the app's JVM, under another name (a JVM defines each once).
    Class<?> h =
        Helper.defineHook(
            MethodHandles.privateLookupIn(SecureRandom.class, MethodHandles.lookup()),
            "java/security/MicrovmReseedHookTest");
    assertEquals(null, h.getClassLoader(), "the boot loader's, as SecureRandom's");
    assertEquals(SecureRandom.class.getModule(), h.getModule());
    h.getField("sink").set(null, new Registry.Sink());
    h.getMethod("drew", Object.class).invoke(null, new Object()); // not a SecureRandom: passed over
  }

  @Test
  void the_jdks_secure_random_is_patched_at_its_two_draws() throws Exception {
    byte[] original = bytesOf(SecureRandom.class);
    byte[] patched = ClassPatch.insert(original, Helper.DRAWS, Hook.NAME);
    assertNotNull(patched, "the JDK's SecureRandom has a shape the patch knows");
    // Six constants and two calls of 4 bytes (plus at most 2 bytes per widened frame).
    int grown = patched.length - original.length;
    int constants = 3 + (2 + Hook.NAME.length()) + (3 + ClassPatch.HOOK.length())
        + (3 + ClassPatch.HOOK_TYPE.length()) + 5 + 5;
    assertTrue(grown >= constants + 8 && grown <= constants + 12, "grew by " + grown);
    assertEquals(ByteBuffer.wrap(original).getInt(4), ByteBuffer.wrap(patched).getInt(4), "version kept");
  }

  @Test
  void a_class_without_the_methods_or_not_a_class_is_left_alone() throws Exception {
    assertNull(ClassPatch.insert(bytesOf(Object.class), Helper.DRAWS, Hook.NAME));
    assertNull(ClassPatch.insert(new byte[] {1, 2, 3}, Helper.DRAWS, Hook.NAME));
    assertNull(ClassPatch.insert(new byte[0], Helper.DRAWS, Hook.NAME));
    assertNull(ClassPatch.renamed(new byte[] {1, 2, 3}, Hook.TEMPLATE, Hook.NAME));
  }

  @Test
  void a_first_frame_too_far_for_its_short_form_takes_the_long_one() throws Exception {
    // same_frame at 62 -> same_frame_extended at 66; the frames after it are deltas: unchanged.
    assertArrayEquals(
        new byte[] {0, 2, (byte) 251, 0, 66, 7},
        ClassPatch.moved("StackMapTable", ByteBuffer.wrap(new byte[] {0, 2, 62, 7})));
    // same_locals_1_stack_item at 61 (with its item, an int) -> the extended form at 65.
    assertArrayEquals(
        new byte[] {0, 1, (byte) 247, 0, 65, 1},
        ClassPatch.moved("StackMapTable", ByteBuffer.wrap(new byte[] {0, 1, (byte) (64 + 61), 1})));
    // A short one that still fits stays short; a long one moves by 4.
    assertArrayEquals(
        new byte[] {0, 1, 14},
        ClassPatch.moved("StackMapTable", ByteBuffer.wrap(new byte[] {0, 1, 10})));
    assertArrayEquals(
        new byte[] {0, 1, (byte) 255, 1, 4},
        ClassPatch.moved("StackMapTable", ByteBuffer.wrap(new byte[] {0, 1, (byte) 255, 1, 0})));
    // What it does not know, it refuses (and the class is left as it was).
    assertNull(ClassPatch.moved("RuntimeVisibleTypeAnnotations", ByteBuffer.wrap(new byte[2])));
  }

  /** Shaped like the JDK's {@code SecureRandom.nextBytes}, with a long straight start. */
  public static class Sample extends SecureRandom {
    private static final long serialVersionUID = 1;
    public int seeds;
    public int draws;
    private final boolean threadSafe = false;

    public Sample() {
      super(new Spi(), new TestProvider());
    }

    @Override
    public void nextBytes(byte[] bytes) {
      int a = bytes.length, b2 = a + 1, c = b2 * 3, d = c ^ a, e = d + b2, f = e * c, g = f - d;
      int h = g + a + b2 + c + d + e + f, i = h * 7 + g * 5 + f * 3 + e, j = i ^ h ^ g ^ f;
      if (threadSafe) {
        draws += j == Integer.MIN_VALUE ? 2 : 1;
      } else {
        synchronized (this) {
          draws += j == Integer.MIN_VALUE ? 2 : 1;
        }
      }
    }

    @Override
    public synchronized void setSeed(byte[] seed) {
      seeds++;
    }
  }

  public static final class TestProvider extends Provider {
    private static final long serialVersionUID = 1;

    public TestProvider() {
      super("test", "1", "test");
    }
  }

  public static final class Spi extends SecureRandomSpi {
    private static final long serialVersionUID = 1;

    @Override
    protected void engineSetSeed(byte[] seed) {}

    @Override
    protected void engineNextBytes(byte[] bytes) {}

    @Override
    protected byte[] engineGenerateSeed(int n) {
      return new byte[n];
    }
  }
}
