package dev.microvm.reseed;

import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.lang.instrument.ClassFileTransformer;
import java.lang.instrument.Instrumentation;
import java.lang.invoke.MethodHandles;
import java.net.ProtocolFamily;
import java.net.SocketAddress;
import java.net.StandardProtocolFamily;
import java.nio.ByteBuffer;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.security.ProtectionDomain;
import java.security.SecureRandom;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashMap;
import java.util.HashSet;
import java.util.Map;
import java.util.Set;

/**
 * The helper's thread: prepares what it will reseed (off the app's start: this thread runs
 * beside {@code main}), registers with the agent over its Unix socket and sleeps in a read; for
 * each generation it reseeds ({@link Generators}) and acknowledges (inproc/PROTOCOL.md).
 */
final class Helper implements Runnable {
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

  private final String path;
  private final Instrumentation inst;

  Helper(String path, Instrumentation inst) {
    this.path = path;
    this.inst = inst;
  }

  @Override
  public void run() {
    try {
      if (filtered()) {
        return;
      }
      boolean instances = prepare();
      Generators generators = new Generators();
      warm(generators);
      Thread compile = new Thread(new Compile(generators), "microvm-reseed-warm");
      compile.setDaemon(true);
      compile.start();
      converse(generators, instances);
    } catch (Throwable t) {
      // The helper stops; the app goes on as it would without it.
    }
  }

  /**
   * Runs a generation's whole path once, at start, with fresh bytes of the process's own: a
   * generation is then code the JVM has loaded, linked and seen, not its first use of {@code
   * MessageDigest}, the providers and reflection inside a hook's budget (measured in a restored
   * clone under emulation: a first generation ran past an 800 ms deadline, warmed it did not).
   * Reseeding with random bytes changes nothing the app can tell.
   */
  static void warm(Generators generators) {
    synchronized (generators) {
      // Never after a real generation: these bytes are the process's own, which in a clone
      // where the kernel was not reseeded are the snapshot's; the generation's must stay.
      if (live) {
        return;
      }
      Wire.Generation g = Wire.parse("MVA1 generation 0 " + hexOf(fresh()) + " 1");
      if (g != null) {
        generators.reseed(0, Mix.mix(g.seed, ProcessHandle.current().pid(), 0, fresh()), false);
        Wire.ack(0, "warm");
      }
    }
  }

  /** A real generation: from now on no warming touches the generators. */
  static String generation(Generators generators, long n, byte[] mix, boolean instances) {
    synchronized (generators) {
      live = true;
      return generators.reseed(n, mix, instances);
    }
  }

  /** Set, under the generators' lock, by the first real generation: no warming after it. */
  private static volatile boolean live;

  /**
   * In a JVM that is still running after a few seconds (a server, the kind a snapshot is taken
   * of), runs a generation's path a few hundred times more, in a thread of its own, so that the
   * JIT compiles it: a clone inherits the compiled code with the rest of the snapshot, and a
   * generation there costs tens of microseconds instead of half a millisecond of interpreted
   * code (measured: 500 µs interpreted, 18 µs compiled, per JVM). A short-lived JVM ends
   * before it starts. Its reseeds use bytes of the process's own, like {@link #warm}.
   */
  private static final class Compile implements Runnable {
    static final long AFTER_MS = 3000;
    static final int ROUNDS = 400;
    private final Generators generators;

    Compile(Generators generators) {
      this.generators = generators;
    }

    @Override
    public void run() {
      try {
        Thread.sleep(AFTER_MS);
        for (int i = 0; i < ROUNDS && !live; i++) {
          warm(generators);
          Thread.sleep(1); // a background task, never a busy core
        }
      } catch (Throwable t) {
        // Nothing to undo.
      }
    }
  }

  private static String hexOf(byte[] b) {
    StringBuilder s = new StringBuilder();
    for (int i = 0; i < 32; i++) {
      s.append(Character.forDigit((b[i % b.length] >> 4) & 15, 16));
      s.append(Character.forDigit(b[i % b.length] & 15, 16));
    }
    return s.toString();
  }

  /**
   * Whether this thread is under a seccomp filter (a sandbox that might kill a socket call):
   * then the helper stays out, as the other helpers do. No /proc: cannot tell, stay out.
   */
  static boolean filtered() {
    for (String name : new String[] {"/proc/thread-self/status", "/proc/self/status"}) {
      try {
        for (String line : Files.readAllLines(Paths.get(name), StandardCharsets.ISO_8859_1)) {
          if (line.startsWith("Seccomp:")) {
            return !line.substring(8).trim().equals("0");
          }
        }
        return false;
      } catch (IOException e) {
        // Try the next.
      }
    }
    return true;
  }

  /**
   * Opens what {@link Generators} reads to this helper, and hooks {@code SecureRandom}'s draws
   * ({@link Registry}, through the {@link Hook}); returns whether the hook is in.
   */
  private boolean prepare() {
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

  private void converse(Generators generators, boolean instances) throws Exception {
    ProtocolFamily unix = StandardProtocolFamily.valueOf("UNIX");
    SocketAddress address =
        (SocketAddress)
            Class.forName("java.net.UnixDomainSocketAddress")
                .getMethod("of", String.class)
                .invoke(null, path);
    long pid = ProcessHandle.current().pid();
    try (SocketChannel channel =
        (SocketChannel)
            SocketChannel.class.getMethod("open", ProtocolFamily.class).invoke(null, unix)) {
      channel.connect(address);
      write(channel, Wire.hello(pid));
      ByteBuffer in = ByteBuffer.allocate(2 * Wire.MAX_LINE);
      byte[] line = new byte[Wire.MAX_LINE + 1];
      int have = 0;
      while (channel.read(in) >= 0) {
        in.flip();
        while (in.hasRemaining()) {
          byte b = in.get();
          if (b != '\n') {
            if (have == line.length) {
              return; // no agent line is this long
            }
            line[have++] = b;
            continue;
          }
          Wire.Generation g = Wire.parse(new String(line, 0, have, StandardCharsets.ISO_8859_1));
          have = 0;
          if (g == null) {
            continue;
          }
          byte[] mix = Mix.mix(g.seed, pid, g.number, fresh());
          Arrays.fill(g.seed, (byte) 0);
          String what = generation(generators, g.number, mix, instances);
          write(channel, Wire.ack(g.number, what));
        }
        in.clear();
      }
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

  private static void write(SocketChannel channel, byte[] bytes) throws IOException {
    ByteBuffer out = ByteBuffer.wrap(bytes);
    while (out.hasRemaining()) {
      channel.write(out);
    }
  }
}
