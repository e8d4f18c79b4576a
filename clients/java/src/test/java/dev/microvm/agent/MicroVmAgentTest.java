package dev.microvm.agent;

import static org.junit.jupiter.api.Assertions.*;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import java.io.IOException;
import java.net.ServerSocket;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.SecureRandom;
import java.time.Duration;
import java.util.List;
import java.util.Random;
import java.util.function.BooleanSupplier;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The Java client library: its parts alone, then against the real agent (a new generation and
 * its acknowledgement, a callback that throws and one that never returns, suspend, terminate).
 */
class MicroVmAgentTest {
  @TempDir Path dir;
  Process agent;
  int port;
  Path out;

  @AfterEach
  void stop() throws Exception {
    if (agent != null && agent.isAlive()) {
      agent.destroy(); // SIGTERM: the agent stops the app first
      if (!agent.waitFor(15, java.util.concurrent.TimeUnit.SECONDS)) agent.destroyForcibly();
    }
  }

  @Test
  void generationsAreEqualByValueAndNeverShowTheSeed() {
    byte[] seed = new byte[32];
    seed[0] = 7;
    var a = new MicroVmAgent.Generation(2, "ab", "run", null, "reseeded", seed, null);
    var b = new MicroVmAgent.Generation(2, "ab", "run", null, "reseeded", seed.clone(), null);
    assertEquals(a, b);
    assertEquals(a.hashCode(), b.hashCode());
    assertNotEquals(a, new MicroVmAgent.Generation(2, "ab", "run", null, "reseeded", new byte[32], null));
    a.processSeed()[0] = 9; // a copy: the generation's own seed is untouched
    assertEquals(7, a.processSeed()[0]);
    seed[0] = 9; // so is the array it was made from
    assertEquals(7, a.processSeed()[0]);
    assertFalse(a.toString().contains("7"), a.toString());
  }

  /** One of the protocol's conformance files (testdata/ at the repository's root). */
  static List<String[]> vectors(String name) throws IOException {
    return Files.readAllLines(Path.of("..", "..", "testdata", name), StandardCharsets.UTF_8).stream()
        .filter(l -> !l.isEmpty() && !l.startsWith("#"))
        .map(l -> l.split("\t", -1))
        .toList();
  }

  @Test
  void readsTheAgentsLinesAsTheVectorsSay() throws IOException {
    List<String[]> records = vectors("lines.tsv");
    assertTrue(records.size() >= 20);
    for (String[] r : records) {
      // As the library reads its socket: US-ASCII (a byte outside it is a replacement character).
      String line = new String(java.util.HexFormat.of().parseHex(r[0]), StandardCharsets.US_ASCII);
      MicroVmAgent.Line m = MicroVmAgent.parse(line);
      String got = "ignore";
      if (m != null) {
        String ms = m.budget() < 0 ? "-" : Long.toString(m.budget());
        got = m.event().equals("generation")
            ? "generation " + m.number() + " " + java.util.HexFormat.of().formatHex(m.seed()) + " " + ms
            : "event " + m.event() + " " + m.number() + " " + ms;
      }
      assertEquals(r[1], got, line);
    }
  }

  @Test
  void mixesAsTheVectorsSay() throws IOException {
    for (String[] r : vectors("mix.tsv")) {
      var hex = java.util.HexFormat.of();
      byte[] got = MicroVmAgent.mix(hex.parseHex(r[0]), Long.parseLong(r[1]), Long.parseUnsignedLong(r[2]), hex.parseHex(r[3]));
      assertEquals(r[5], hex.formatHex(got));
    }
  }

  @Test
  void readsGenerationFilesAsTheVectorsSay() throws IOException {
    List<String[]> records = vectors("generation.tsv");
    assertTrue(records.size() >= 8);
    for (String[] r : records) {
      String text = Files.readString(Path.of("..", "..", "testdata", "generation", r[0]));
      var g = MicroVmAgent.fromJson(text);
      if (r[1].equals("reject")) {
        assertTrue(g.isEmpty(), r[0]);
        continue;
      }
      var v = g.orElseThrow(() -> new AssertionError(r[0]));
      String vm = v.microvmId() == null ? "null" : v.microvmId();
      assertArrayEquals(r, new String[] {r[0], Long.toString(v.number()), v.id(), v.reason(), vm, v.kernelCrng()}, r[0]);
    }
  }

  @Test
  void theProtocolLines() {
    MicroVmAgent.Line m = MicroVmAgent.parse("MVA1 generation 3 " + "ab".repeat(32));
    assertEquals("generation", m.event());
    assertEquals(3L, m.number());
    assertEquals((byte) 0xab, m.seed()[0]);
    assertEquals(-1L, m.budget());
    assertEquals(850L, MicroVmAgent.parse("MVA1 generation 3 " + "ab".repeat(32) + " 850").budget());
    assertEquals("suspend", MicroVmAgent.parse("MVA1 event suspend 3").event());
    assertEquals(0L, MicroVmAgent.parse("MVA1 event terminate 3 0").budget());
    assertNull(MicroVmAgent.parse("MVA1 event suspend 3 -1"));
    assertNull(MicroVmAgent.parse("MVA1 event suspend 3 1 2"));
    assertNull(MicroVmAgent.parse("MVA1 event suspend 3 "));
    assertNull(MicroVmAgent.parse("MVA1 event reboot 3"));
    assertNull(MicroVmAgent.parse("MVA2 generation 3 " + "ab".repeat(32)));
    String fail = MicroVmAgent.failLine(7, "boom " + "é".repeat(300) + "\nmore");
    assertTrue(fail.getBytes(StandardCharsets.UTF_8).length <= 256 && fail.endsWith("\n"));
    assertEquals(1, fail.chars().filter(c -> c == '\n').count());
    assertTrue(fail.getBytes(StandardCharsets.UTF_8).length >= 254, "cut at the last whole character");
    // One pass (it re-encoded the whole message per character cut): at once, or the runner hangs.
    String huge = MicroVmAgent.failLine(7, "x".repeat(16 << 20));
    assertEquals(256, huge.getBytes(StandardCharsets.UTF_8).length);
  }

  @Test
  void theGenerationFileReadsWithoutAJsonLibrary() {
    var g = MicroVmAgent.fromJson(
        "{\"generation\":2,\"id\":\"ab12\",\"reason\":\"resume\",\"microvm_id\":null,\"kernel_crng\":\"platform\",\"clock\":{\"source\":\"rtc\"}}")
        .orElseThrow();
    assertEquals(2, g.number());
    assertEquals("ab12", g.id());
    assertNull(g.microvmId());
    assertEquals("platform", g.kernelCrng());
  }

  @Test
  void reseedMakesKeptGeneratorsLeaveTheirSequence() throws Exception {
    Random a = new Random(1), b = new Random(1);
    MicroVmAgent.reseed(a);
    assertNotEquals(a.nextLong(), b.nextLong());
    // A DRBG, and SHA1PRNG (whose reseed() throws on JDK 17): both fine.
    MicroVmAgent.reseed(SecureRandom.getInstance("DRBG"));
    SecureRandom sha1 = SecureRandom.getInstance("SHA1PRNG");
    sha1.setSeed(1);
    SecureRandom twin = SecureRandom.getInstance("SHA1PRNG");
    twin.setSeed(1);
    MicroVmAgent.reseed(sha1);
    assertNotEquals(sha1.nextLong(), twin.nextLong());
  }

  // ---- against the real agent ----

  static Path agentBinary() {
    String env = System.getenv("MICROVM_AGENT_BIN");
    Path bin = env != null ? Path.of(env) : Path.of("../../target/debug/microvm-agent").toAbsolutePath();
    if (!Files.exists(bin)) {
      assertNull(System.getenv("MICROVM_AGENT_REQUIRE_VM"), "the agent is not built: " + bin);
      assumeTrue(false, "the agent is not built (cargo build): " + bin);
    }
    return bin;
  }

  void start(String mode) throws Exception {
    Path bin = agentBinary();
    try (ServerSocket s = new ServerSocket(0)) {
      port = s.getLocalPort();
    }
    out = Files.createDirectories(dir.resolve("out"));
    Path conf = Files.writeString(dir.resolve("agent.toml"), "[hooks]\nrun_timeout = \"2s\"\n");
    String java = Path.of(System.getProperty("java.home"), "bin", "java").toString();
    // The console launcher loads the tests itself: test.sh names the class path (Maven sets it).
    String cp = System.getProperty("mva.classpath", System.getProperty("java.class.path"));
    ProcessBuilder pb = new ProcessBuilder(bin.toString(), "--listen", "127.0.0.1:" + port,
        "--state-dir", dir.resolve("state").toString(), "--log-format", "text", "-c", conf.toString(),
        "--", java, "-cp", cp, "dev.microvm.agent.TestApp", mode, out.toString());
    pb.environment().remove("MICROVM_AGENT_INPROC");
    pb.environment().put("MICROVM_AGENT_LOG", "warn");
    pb.redirectError(ProcessBuilder.Redirect.INHERIT).redirectOutput(ProcessBuilder.Redirect.DISCARD);
    agent = pb.start();
    waitFor("the app to start", () -> !read("started").isEmpty());
    waitFor("the library to register", () -> status().contains("\"kind\":\"app\""));
  }

  HttpResponse<String> http(String method, String path) {
    try {
      var req = HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + port + path))
          .method(method, HttpRequest.BodyPublishers.noBody()).timeout(Duration.ofSeconds(20)).build();
      return HttpClient.newHttpClient().send(req, HttpResponse.BodyHandlers.ofString());
    } catch (IOException | InterruptedException e) {
      throw new RuntimeException(e);
    }
  }

  String status() {
    try {
      return http("GET", "/status").body();
    } catch (RuntimeException e) {
      return "";
    }
  }

  List<String> read(String name) {
    try {
      return Files.readAllLines(out.resolve(name));
    } catch (IOException e) {
      return List.of();
    }
  }

  void waitFor(String why, BooleanSupplier f) throws InterruptedException {
    long deadline = System.nanoTime() + 30_000_000_000L;
    while (!f.getAsBoolean()) {
      assertTrue(System.nanoTime() < deadline, "waited for " + why);
      Thread.sleep(50);
    }
  }

  @Test
  void aNewGenerationRunsTheCallbacksInOrderBeforeTheHookAnswers() throws Exception {
    start("ok");
    assertTrue(read("generations").isEmpty(), "nothing at start");
    var run = http("POST", "/run");
    assertEquals(200, run.statusCode(), run.body());
    assertEquals(List.of("first", "second"), read("order"));
    var gens = read("generations");
    assertEquals(1, gens.size());
    assertTrue(gens.get(0).startsWith("1_") && gens.get(0).endsWith("_true"), gens.toString());
    assertTrue(status().contains(gens.get(0).split("_")[1]));
    assertEquals(200, http("POST", "/suspend").statusCode());
    assertEquals(List.of("suspend_1"), read("events"));
    assertEquals(200, http("POST", "/resume").statusCode());
    var draws = read("draws");
    assertEquals(2, draws.size());
    assertNotEquals(draws.get(0), draws.get(1));
    // The agent's deadline came with each line: inside the hook's budget, not yet past.
    var budgets = read("budgets");
    assertEquals(2, budgets.size(), budgets.toString());
    for (String ms : budgets) {
      long left = Long.parseLong(ms);
      assertTrue(left > 0 && left <= 2000, budgets.toString());
    }
    assertEquals(200, http("POST", "/terminate").statusCode());
    waitFor("the terminate callback", () -> read("events").contains("terminate_2"));
  }

  @Test
  void aCallbackThatThrowsFailsRunAndOnlyReportsOnResume() throws Exception {
    start("throw");
    var run = http("POST", "/run");
    assertEquals(500, run.statusCode());
    assertTrue(run.body().contains("IllegalStateException: the app's callback broke"), run.body());
    assertEquals(200, http("POST", "/resume").statusCode());
  }

  @Test
  void aCallbackThatNeverReturnsFailsRunInsideItsBudget() throws Exception {
    start("hang");
    long t = System.nanoTime();
    var run = http("POST", "/run");
    assertEquals(500, run.statusCode());
    assertTrue(run.body().contains("did not acknowledge"), run.body());
    assertTrue(System.nanoTime() - t < 2_000_000_000L, "answered inside run_timeout (2 s)");
  }
}
