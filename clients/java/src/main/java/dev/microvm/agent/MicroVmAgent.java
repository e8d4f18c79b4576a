package dev.microvm.agent;

import java.io.IOException;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.SocketChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.DrbgParameters;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.security.SecureRandom;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.Random;
import java.util.concurrent.CopyOnWriteArrayList;

/**
 * Clone-safety callbacks for an app behind microvm-agent (AWS Lambda MicroVMs).
 *
 * <p>Every VM of an image is a clone of one snapshot: what the app holds in memory (a {@code
 * Random} it keeps, a DRBG, ids and keys it made) is the same in every clone. This class runs the
 * app's callbacks at the right moment, before the agent answers the platform's hook (the shape
 * of CRaC's {@code afterRestore}), over the agent's Unix socket ({@code $MICROVM_AGENT_INPROC},
 * kind {@code app}; {@code inproc/PROTOCOL.md} in the agent's repository). No dependencies.
 */
public final class MicroVmAgent {
  /** A callback; what it throws is reported to the agent. */
  @FunctionalInterface
  public interface Callback {
    void run(Generation generation) throws Exception;
  }

  /** One generation as the agent published it ({@code <state_dir>/generation}). */
  public record Generation(
      long number,
      String id,
      String reason,
      String microvmId,
      String kernelCrng,
      /* The 32 bytes the agent sent this process for this generation (null for suspend/terminate). */
      byte[] processSeed,
      /* When the agent stops waiting for this event's callbacks (null when it did not say: an
         older agent, or current()). */
      java.time.Instant deadline) {
    public Generation {
      processSeed = processSeed == null ? null : processSeed.clone();
    }

    /** A copy: the caller may wipe it after use without touching the generation's. */
    @Override
    public byte[] processSeed() {
      return processSeed == null ? null : processSeed.clone();
    }

    /** Equal when every field is, the seed by its bytes (a record compares arrays by identity). */
    @Override
    public boolean equals(Object o) {
      return o instanceof Generation g
          && number == g.number
          && java.util.Objects.equals(id, g.id)
          && java.util.Objects.equals(reason, g.reason)
          && java.util.Objects.equals(microvmId, g.microvmId)
          && java.util.Objects.equals(kernelCrng, g.kernelCrng)
          && java.util.Arrays.equals(processSeed, g.processSeed)
          && java.util.Objects.equals(deadline, g.deadline);
    }

    @Override
    public int hashCode() {
      return java.util.Objects.hash(number, id, reason, microvmId, kernelCrng, deadline)
          * 31 + java.util.Arrays.hashCode(processSeed);
    }

    /** Never the seed. */
    @Override
    public String toString() {
      return "Generation[number=" + number + ", id=" + id + ", reason=" + reason + "]";
    }
  }

  /**
   * One line from the agent: a generation (with this process's seed) or an event, and the
   * milliseconds left until the agent stops waiting (-1 when the line does not say).
   */
  record Line(String event, long number, byte[] seed, long budget) {}

  private static final int MAX_LINE = 256;
  private static final System.Logger LOG = System.getLogger("microvm_agent");
  private static final List<Callback> GENERATION = new CopyOnWriteArrayList<>();
  private static final List<Callback> SUSPEND = new CopyOnWriteArrayList<>();
  private static final List<Callback> TERMINATE = new CopyOnWriteArrayList<>();
  private static boolean started;
  private static volatile boolean connected;
  private static volatile byte[] processSeed;
  /** The generation {@code processSeed} came with. */
  private static volatile long processNumber;

  private MicroVmAgent() {}

  /** Runs {@code cb} on every new generation (each clone's /run, every /resume), before the hook answers. */
  public static void onNewGeneration(Callback cb) {
    register(GENERATION, cb);
  }

  /** Runs {@code cb} on /suspend, before the VM is frozen. */
  public static void onSuspend(Callback cb) {
    register(SUSPEND, cb);
  }

  /** Runs {@code cb} on /terminate, before the agent stops the app. */
  public static void onTerminate(Callback cb) {
    register(TERMINATE, cb);
  }

  public static boolean isActive() {
    return connected;
  }

  private static synchronized void register(List<Callback> list, Callback cb) {
    if (cb == null) throw new NullPointerException("callback");
    list.add(cb);
    if (started) return;
    started = true;
    String path = System.getenv("MICROVM_AGENT_INPROC");
    warmUp();
    if (path == null) {
      LOG.log(System.Logger.Level.INFO, "not behind microvm-agent (no MICROVM_AGENT_INPROC): callbacks will not run");
      return;
    }
    Thread t = new Thread(() -> serve(path), "microvm-agent");
    t.setDaemon(true);
    t.start();
  }

  /**
   * Runs the library's own path once, callbacks aside, before the snapshot: a clone's first
   * generation otherwise pays for loading and verifying these classes inside the hook's budget
   * (measured under an emulated CPU: a Java app's first /run went from 0.3 to 0.7 s without it).
   * The same reason has that path build its strings with {@code StringBuilder}, not {@code +}:
   * javac compiles {@code +} to invokedynamic, whose first call at each site links a method
   * handle chain, measured as half of a cold event's cost (5 of 10 ms with {@code -Xint}).
   */
  private static void warmUp() {
    parse("MVA1 generation 0 " + "00".repeat(32));
    parse("MVA1 event suspend 0");
    fromJson("{\"generation\":0,\"id\":\"00\",\"reason\":\"warm-up\",\"microvm_id\":null}");
    failLine(0, "warm-up");
    ackLine(0, 0);
    current();
    seedMaterial();
  }

  private static Optional<byte[]> read(String name) {
    String dir = System.getenv("MICROVM_AGENT_STATE_DIR");
    if (dir == null) return Optional.empty();
    try {
      return Optional.of(Files.readAllBytes(Path.of(dir, name)));
    } catch (IOException e) {
      return Optional.empty();
    }
  }

  /** The current generation (empty before the first one, or outside a MicroVM). */
  public static Optional<Generation> current() {
    return read("generation").map(b -> new String(b, StandardCharsets.UTF_8)).flatMap(MicroVmAgent::fromJson);
  }

  /** The generation file's format this library reads ({@code inproc/PROTOCOL.md}, "The state directory"). */
  static final long FORMAT = 1;

  /**
   * A generation file's text, or empty when it is not one this library can read: not a JSON
   * object, another {@code format} (absent: 1, as agents before the field wrote), no generation
   * number. Unknown fields are a later agent's and are ignored.
   */
  static Optional<Generation> fromJson(String json) {
    Object doc;
    try {
      doc = Json.parse(json);
    } catch (IllegalArgumentException e) {
      return Optional.empty();
    }
    if (!(doc instanceof Map<?, ?> m)) return Optional.empty();
    Object format = m.containsKey("format") ? m.get("format") : FORMAT;
    if (!(format instanceof Long f) || f != FORMAT) return Optional.empty();
    if (!(m.get("generation") instanceof Long n) || n < 0) return Optional.empty();
    return Optional.of(new Generation(n, text(m, "id"), text(m, "reason"), text(m, "microvm_id"),
        text(m, "kernel_crng"), null, null));
  }

  private static String text(Map<?, ?> m, String key) {
    return m.get(key) instanceof String s ? s : null;
  }

  public static Optional<String> generationId() {
    return current().map(Generation::id);
  }

  public static Optional<String> kernelCrng() {
    return current().map(Generation::kernelCrng);
  }

  /** The app's seed for this generation (32 bytes). */
  public static Optional<byte[]> seed() {
    return read("seed");
  }

  /** The value of the agent's {@code [[secret]]} {@code name} for this generation. */
  public static Optional<byte[]> secret(String name) {
    if (name.isEmpty() || name.contains("/") || name.equals(".") || name.equals("..")) {
      throw new IllegalArgumentException("not a secret's name: " + name);
    }
    return read("secrets/" + name);
  }

  /**
   * 32 bytes that differ in every clone even where the kernel's generator does not: the
   * protocol's mix of the agent's seed for this process (or the app's seed) with fresh {@code
   * SecureRandom} bytes.
   */
  public static byte[] seedMaterial() {
    byte[] fresh = new byte[32];
    new SecureRandom().nextBytes(fresh);
    byte[] agent = processSeed;
    long number = processNumber;
    if (agent == null) {
      agent = seed().orElse(new byte[32]);
      number = current().map(Generation::number).orElse(0L);
    }
    return mix(agent, ProcessHandle.current().pid(), number, fresh);
  }

  /**
   * The protocol's one mixing rule ({@code inproc/PROTOCOL.md}, "Mixing"): SHA-256 of the seed
   * (32 bytes), the pid (u32) and the generation (u64), little-endian, then the fresh bytes.
   */
  static byte[] mix(byte[] seed, long pid, long number, byte[] fresh) {
    ByteBuffer head = ByteBuffer.allocate(44).order(java.nio.ByteOrder.LITTLE_ENDIAN);
    head.put(java.util.Arrays.copyOf(seed, 32)).putInt((int) pid).putLong(number);
    try {
      MessageDigest sha = MessageDigest.getInstance("SHA-256");
      sha.update(head.array());
      sha.update(fresh);
      return sha.digest();
    } catch (NoSuchAlgorithmException e) {
      throw new IllegalStateException(e);
    }
  }

  /** A {@code Random} seeded from {@link #seedMaterial()}. */
  public static Random newRandom() {
    return new Random(ByteBuffer.wrap(seedMaterial()).getLong());
  }

  /** Reseeds a {@code Random} the app keeps from {@link #seedMaterial()}. */
  public static void reseed(Random r) {
    if (r instanceof SecureRandom sr) {
      reseed(sr);
    } else {
      r.setSeed(ByteBuffer.wrap(seedMaterial()).getLong());
    }
  }

  /**
   * Reseeds a {@code SecureRandom}: a DRBG with {@code reseed(DrbgParameters.reseed(false,
   * mix))}; anything else (SHA1PRNG, NativePRNG, whose {@code reseed()} throws on JDK 17) with
   * {@code setSeed}, which mixes.
   */
  public static void reseed(SecureRandom sr) {
    byte[] mix = seedMaterial();
    if ("DRBG".equals(sr.getAlgorithm())) {
      sr.reseed(DrbgParameters.reseed(false, mix));
    } else {
      sr.setSeed(mix);
    }
  }

  /**
   * The connection: the hello, then a line from the agent, the callbacks, the answer, for as
   * long as the agent is there. The socket is read a buffer at a time, not a byte at a time: the
   * first event after a restore runs this code cold (interpreted), and each read is a long way
   * through the JDK's channel code (measured under an emulated CPU: byte-at-a-time reads put a
   * Java app's first /run at 0.6-0.7 s, against 0.3 s with an HTTP handler).
   */
  private static void serve(String path) {
    try (SocketChannel ch = SocketChannel.open(StandardProtocolFamily.UNIX)) {
      ch.connect(UnixDomainSocketAddress.of(path));
      connected = true;
      // The events it wants beside generations, then the features it knows: "deadline" (each
      // line carries the milliseconds left; an agent that predates it ignores the word).
      write(ch, "MVA1 hello app " + ProcessHandle.current().pid() + " suspend,terminate deadline\n");
      ByteBuffer buf = ByteBuffer.allocate(MAX_LINE);
      while (ch.read(buf) >= 0) {
        buf.flip();
        int start = buf.position();
        for (int i = start; i < buf.limit(); i++) {
          if (buf.get(i) != '\n') continue;
          String answer = handle(new String(buf.array(), start, i - start, StandardCharsets.US_ASCII));
          start = i + 1;
          if (answer != null) write(ch, answer);
        }
        buf.position(start);
        buf.compact();
        if (!buf.hasRemaining()) return; // a line longer than the protocol allows
      }
    } catch (IOException e) {
      if (!connected) LOG.log(System.Logger.Level.WARNING, "cannot reach microvm-agent at " + path + ": " + e);
    } finally {
      connected = false;
    }
  }

  private static void write(SocketChannel ch, String line) throws IOException {
    ByteBuffer out = ByteBuffer.wrap(line.getBytes(StandardCharsets.UTF_8));
    while (out.hasRemaining()) ch.write(out);
  }

  /** The protocol's largest generation number, 2^53 - 1 (every runtime holds it exactly). */
  static final long MAX_NUMBER = (1L << 53) - 1;

  /** {@code 0} or 1 to {@code most} ASCII digits without a leading zero, else -1. */
  static long decimal(String word, int most) {
    if (word.isEmpty() || word.length() > most || (word.charAt(0) == '0' && word.length() > 1)) return -1;
    for (int i = 0; i < word.length(); i++) {
      if (word.charAt(i) < '0' || word.charAt(i) > '9') return -1;
    }
    return Long.parseLong(word);
  }

  /**
   * A line from the agent, or null when it is not one: the grammar of {@code
   * inproc/PROTOCOL.md}, checked against {@code testdata/lines.tsv}.
   */
  static Line parse(String line) {
    String[] w = line.split(" ", -1);
    if ((w.length != 4 && w.length != 5) || !w[0].equals("MVA1")) return null;
    long budget = w.length == 5 ? decimal(w[4], 9) : -1;
    if (w.length == 5 && budget < 0) return null;
    if (w[1].equals("generation")) {
      long n = decimal(w[2], 16);
      if (n < 0 || n > MAX_NUMBER || w[3].length() != 64 || !w[3].chars().allMatch(c -> c >= '0' && c <= '9' || c >= 'a' && c <= 'f')) {
        return null;
      }
      return new Line("generation", n, HexFormat.of().parseHex(w[3]), budget);
    }
    if (w[1].equals("event") && (w[2].equals("suspend") || w[2].equals("terminate"))) {
      long n = decimal(w[3], 16);
      return n < 0 || n > MAX_NUMBER ? null : new Line(w[2], n, null, budget);
    }
    return null;
  }

  static String handle(String line) {
    Line m = parse(line);
    if (m == null) return null;
    String event = m.event();
    long number = m.number();
    byte[] seed = m.seed();
    if (seed != null) {
      processSeed = seed;
      processNumber = number;
    }
    java.time.Instant deadline = m.budget() < 0 ? null : java.time.Instant.now().plusMillis(m.budget());
    Generation g = current().orElse(new Generation(number, null, null, null, null, null, null));
    g = new Generation(g.number(), g.id(), g.reason(), g.microvmId(), g.kernelCrng(), seed, deadline);
    List<Callback> list = new ArrayList<>(
        event.equals("generation") ? GENERATION : event.equals("suspend") ? SUSPEND : TERMINATE);
    for (Callback cb : list) {
      try {
        cb.run(g);
      } catch (Throwable e) {
        LOG.log(System.Logger.Level.ERROR, "a " + event + " callback failed", e);
        return failLine(number, new StringBuilder(e.getClass().getSimpleName()).append(": ").append(e.getMessage()).toString());
      }
    }
    return ackLine(number, list.size());
  }

  static String ackLine(long number, int callbacks) {
    return new StringBuilder("MVA1 ack ").append(number).append(" callbacks=").append(callbacks).append('\n').toString();
  }

  /** One protocol line of at most 256 bytes, whole characters: one pass over what can fit. */
  static String failLine(long number, String reason) {
    String head = new StringBuilder("MVA1 fail ").append(number).append(' ').toString();
    int room = MAX_LINE - 1 - head.getBytes(StandardCharsets.UTF_8).length;
    StringBuilder line = new StringBuilder(head);
    int used = 0;
    for (int i = 0; i < reason.length(); ) {
      int cp = reason.codePointAt(i);
      // UTF-8 length; a lone surrogate is encoded as one '?', counted as three to be safe.
      int len = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
      if (used + len > room) {
        break;
      }
      used += len;
      line.appendCodePoint(cp == '\n' || cp == '\r' ? ' ' : cp);
      i += Character.charCount(cp);
    }
    return line.append('\n').toString();
  }
}
