package dev.microvm.reseed;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.stream.Collectors;
import org.junit.jupiter.api.Test;

/**
 * The protocol's conformance vectors (testdata/ at the repository's root) that this side
 * implements: the mix. The lines are the native helper's to read (its own tests run them).
 */
class ConformanceTest {
  static List<String[]> rows(String name) throws Exception {
    return Files.readAllLines(Path.of("..", "..", "testdata", name), StandardCharsets.UTF_8).stream()
        .filter(l -> !l.isEmpty() && !l.startsWith("#"))
        .map(l -> l.split("\t", -1))
        .collect(Collectors.toList());
  }

  static byte[] unhex(String s) {
    byte[] out = new byte[s.length() / 2];
    for (int i = 0; i < out.length; i++) {
      out[i] = (byte) Integer.parseInt(s.substring(2 * i, 2 * i + 2), 16);
    }
    return out;
  }

  static String hex(byte[] b) {
    StringBuilder s = new StringBuilder();
    for (byte x : b) {
      s.append(String.format("%02x", x));
    }
    return s.toString();
  }

  @Test
  void the_mix_is_the_protocols_one_rule() throws Exception {
    List<String[]> rows = rows("mix.tsv");
    assertTrue(rows.size() >= 3, "the vectors are there");
    for (String[] r : rows) {
      byte[] seed = unhex(r[0]);
      long pid = Long.parseLong(r[1]);
      long n = Long.parseUnsignedLong(r[2]);
      byte[] fresh = unhex(r[3]);
      assertEquals(r[4], hex(Mix.material(seed, pid, n, fresh)));
      assertArrayEquals(unhex(r[5]), Mix.mix(seed, pid, n, fresh));
    }
  }
}
