package dev.microvm.reseed;

import java.io.ByteArrayOutputStream;
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
      warm(generators, instances);
      Thread compile = new Thread(new Compile(generators, instances), "microvm-reseed-warm");
      compile.setDaemon(true);
      compile.start();
      converse(generators, instances);
    } catch (Throwable t) {
      // The helper stops; the app goes on as it would without it.
    }
  }

  /** Where a generation's mix is kept: a real one's is what warming derives its seeds from. */
  static final int REAL = 0;

  static final int WARM = 1;

  /**
   * Runs a generation's whole path once, at start, with fresh bytes of the process's own: a
   * generation is then code the JVM has loaded, linked and seen, not its first use of {@code
   * MessageDigest}, the providers and reflection inside a hook's budget (measured in a restored
   * clone under emulation: a first generation ran past an 800 ms deadline, warmed it did not).
   * Reseeding with random bytes changes nothing the app can tell.
   */
  static void warm(Generators generators, boolean instances) {
    warm(generators, instances, fresh(), fresh());
  }

  /**
   * One warming round with these bytes: a generation line made here, read and answered by the
   * code that reads and answers the agent's (same methods, same branches: the JIT compiles for
   * what it has seen, and code compiled for warming alone was thrown away at the first real
   * generation and compiled again, measured as 2-9 ms at `/resume`'s p99 with four JVMs). After
   * a real generation the seed is derived from that generation's mix, never from these bytes
   * alone: in a clone whose kernel was not reseeded they are the snapshot's kernel stream,
   * which every clone reads too (in another order).
   */
  static void warm(Generators generators, boolean instances, byte[] own, byte[] fresh) {
    synchronized (generators) {
      long k = ++generators.warmed;
      byte[] last = generators.mixes[REAL];
      byte[] seed = last == null ? own : Mix.derive(last, "warm", k);
      lines(
          ByteBuffer.wrap(line(k, seed)),
          new Reader(),
          generators,
          instances,
          ProcessHandle.current().pid(),
          fresh,
          WARM,
          generators.warmAcks);
      generators.warmAcks.reset(); // as the real path's, reused: the same branches
    }
  }

  /**
   * Answers every line that ends in `in` (flipped), its acknowledgement appended to `acks`; a
   * line not yet ended stays in `reader`. False for a line longer than any of the agent's.
   */
  static boolean lines(
      ByteBuffer in,
      Reader reader,
      Generators generators,
      boolean instances,
      long pid,
      byte[] fresh,
      int slot,
      ByteArrayOutputStream acks) {
    int len;
    while ((len = reader.next(in)) != -1) {
      if (len == -2) {
        return false;
      }
      byte[] ack = answer(reader.line, len, generators, instances, pid, fresh, slot);
      if (ack != null) {
        acks.write(ack, 0, ack.length);
      }
    }
    return true;
  }

  /** A generation line as the agent writes it, with its newline. */
  static byte[] line(long n, byte[] seed) {
    return ("MVA1 generation " + n + " " + hexOf(seed) + "\n").getBytes(StandardCharsets.ISO_8859_1);
  }

  /**
   * A line's answer: for a generation, its acknowledgement once every generator is reseeded as
   * that generation says (`slot`: {@link #REAL}, or {@link #WARM} for a warming round); null for
   * any other line.
   */
  static byte[] answer(
      byte[] line,
      int len,
      Generators generators,
      boolean instances,
      long pid,
      byte[] fresh,
      int slot) {
    Wire.Generation g = Wire.parse(new String(line, 0, len, StandardCharsets.ISO_8859_1));
    if (g == null) {
      return null;
    }
    byte[] mix = Mix.mix(g.seed, pid, g.number, fresh);
    Arrays.fill(g.seed, (byte) 0);
    String what;
    synchronized (generators) {
      generators.mixes[slot] = mix;
      what = generators.reseed(slot, mix, instances);
    }
    return Wire.ack(g.number, what);
  }

  /** The bytes of a line not yet ended, across reads. */
  static final class Reader {
    final byte[] line = new byte[Wire.MAX_LINE + 1];
    int have;

    /**
     * Takes bytes from `in` to the end of a line: the line's length once it has ended (its
     * bytes at the start of {@link #line}), -1 when `in` ran out first, -2 for a line longer
     * than any of the agent's.
     */
    int next(ByteBuffer in) {
      while (in.hasRemaining()) {
        byte b = in.get();
        if (b == '\n') {
          int len = have;
          have = 0;
          return len;
        }
        if (have == line.length) {
          return -2;
        }
        line[have++] = b;
      }
      return -1;
    }
  }

  /**
   * In a JVM that is still running after a few seconds (a server, the kind a snapshot is taken
   * of), runs a generation's path a few thousand times more, in a thread of its own, so that the
   * JIT compiles all of it, to its last tier: a clone inherits the compiled code with the rest
   * of the snapshot. Measured with four JVMs on two cores: until about 3,000 generations had
   * run, the JIT's compilations of the path (four JVMs compiling at once) put `/resume`'s p99 at
   * 2-9 ms; after, at about 0.4 ms over the helpers off. A short-lived JVM ends before it starts.
   * About 0.2 s of one core in all, a round per millisecond at most; it goes on after a real
   * generation (with seeds derived from it, see {@link #warm(Generators, byte[], byte[])}).
   */
  private static final class Compile implements Runnable {
    static final long AFTER_MS = 3000;
    static final int ROUNDS = 6000;
    private final Generators generators;
    private final boolean instances;

    Compile(Generators generators, boolean instances) {
      this.generators = generators;
      this.instances = instances;
    }

    @Override
    public void run() {
      try {
        Thread.sleep(AFTER_MS);
        for (int i = 0; i < ROUNDS; i++) {
          warm(generators, instances);
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
      Reader reader = new Reader();
      ByteArrayOutputStream acks = new ByteArrayOutputStream();
      while (channel.read(in) >= 0) {
        in.flip();
        if (!lines(in, reader, generators, instances, pid, fresh(), REAL, acks)) {
          return; // no agent line is this long
        }
        in.clear();
        if (acks.size() > 0) {
          write(channel, acks.toByteArray());
          acks.reset();
        }
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
