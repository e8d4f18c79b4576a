package dev.microvm.reseed;

import java.util.function.Consumer;

/**
 * What the patched {@code SecureRandom.nextBytes} calls first ({@link ClassPatch}). A template:
 * {@link Helper} defines a copy of it named {@link #NAME}, in {@code java.security}'s own package
 * and loader, because a method of {@code java.base} can only call classes its loader (the boot
 * loader) can find, and this jar is on the app's class path. The copy calls back into this jar
 * through {@link #sink}, set once {@link Registry} is ready; until then a draw costs one volatile
 * read.
 *
 * <p>Why not this jar on the boot class path instead: appended after start, the JVM turns its
 * class sharing (CDS) off for every class not loaded by the boot loader, and says so on the
 * standard error of every JVM; appended at start ({@code -Xbootclasspath/a}) it costs about 6 ms
 * of start (measured, JDK 17).
 */
public final class Hook {
  /** The name of the copy in {@code java.base}. */
  static final String NAME = "java/security/MicrovmReseedHook";
  /** This template's own name, replaced by {@link #NAME} in the copy. */
  static final String TEMPLATE = "dev/microvm/reseed/Hook";

  /** Where draws go; null until the helper is ready. */
  public static volatile Consumer<Object> sink;

  private Hook() {}

  public static void drew(Object random) {
    Consumer<Object> s = sink;
    if (s != null) {
      s.accept(random);
    }
  }
}
