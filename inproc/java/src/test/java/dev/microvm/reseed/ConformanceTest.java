package dev.microvm.reseed;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.stream.Collectors;
import org.junit.jupiter.api.Test;

/** The protocol's conformance vectors (testdata/ at the repository's root). */
class ConformanceTest {
  static List<String[]> rows(String name) throws Exception {
    return Files.readAllLines(Path.of("..", "..", "testdata", name), StandardCharsets.UTF_8).stream()
        .filter(l -> !l.isEmpty() && !l.startsWith("#"))
        .map(l -> l.split("\t", -1))
        .collect(Collectors.toList());
  }

  static String hex(byte[] b) {
    StringBuilder s = new StringBuilder();
    for (byte x : b) {
      s.append(String.format("%02x", x));
    }
    return s.toString();
  }

  @Test
  void every_line_of_the_vectors_reads_as_the_protocol_says() throws Exception {
    List<String[]> rows = rows("lines.tsv");
    assertTrue(rows.size() >= 20, "the vectors are there");
    for (String[] r : rows) {
      String line = new String(Wire.hex(r[0]), StandardCharsets.ISO_8859_1);
      String[] want = r[1].split(" ");
      Wire.Generation g = Wire.parse(line);
      if (want[0].equals("generation")) {
        assertTrue(g != null, "a generation: " + line);
        assertEquals(Long.parseLong(want[1]), g.number, line);
        assertEquals(want[2], hex(g.seed), line);
      } else {
        // A helper hears generations only: events and anything else are nothing to it.
        assertNull(g, line);
      }
    }
  }

  @Test
  void the_mix_is_the_protocols_one_rule() throws Exception {
    List<String[]> rows = rows("mix.tsv");
    assertTrue(rows.size() >= 3, "the vectors are there");
    for (String[] r : rows) {
      byte[] seed = Wire.hex(r[0]);
      long pid = Long.parseLong(r[1]);
      long n = Long.parseUnsignedLong(r[2]);
      byte[] fresh = Wire.hex(r[3]);
      assertEquals(r[4], hex(Mix.material(seed, pid, n, fresh)));
      assertArrayEquals(Wire.hex(r[5]), Mix.mix(seed, pid, n, fresh));
    }
  }

  @Test
  void the_hello_and_the_ack_are_the_protocols_lines() {
    assertEquals("MVA1 hello java 42 -\n", new String(Wire.hello(42), StandardCharsets.US_ASCII));
    assertEquals(
        "MVA1 ack 7 nativeprng,math.random\n",
        new String(Wire.ack(7, "nativeprng,math.random"), StandardCharsets.US_ASCII));
  }
}
