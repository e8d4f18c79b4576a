package dev.microvm.reseed;

import java.nio.charset.StandardCharsets;

/**
 * The agent's lines as this helper reads them (inproc/PROTOCOL.md, "The conversation"; checked
 * against testdata/lines.tsv). A helper hears generations only: every other line is ignored.
 */
final class Wire {
  private Wire() {}

  /** The longest line the agent sends, without its newline. */
  static final int MAX_LINE = 256;

  private static final String GENERATION = "MVA1 generation ";
  private static final long MAX_NUMBER = 9007199254740991L; // 2^53 - 1

  /** A generation line: its number and the agent's 32 bytes for this process. */
  static final class Generation {
    final long number;
    final byte[] seed;

    Generation(long number, byte[] seed) {
      this.number = number;
      this.seed = seed;
    }
  }

  /** The generation a line (without its newline) carries, or null for any other line. */
  static Generation parse(String line) {
    if (!line.startsWith(GENERATION)) {
      return null;
    }
    String[] words = line.substring(GENERATION.length()).split(" ", -1);
    if (words.length < 2 || words.length > 3) {
      return null;
    }
    long n = number(words[0], 16);
    if (n < 0 || n > MAX_NUMBER) {
      return null;
    }
    byte[] seed = hex(words[1]);
    if (seed == null || seed.length != 32) {
      return null;
    }
    if (words.length == 3 && number(words[2], 9) < 0) {
      return null;
    }
    return new Generation(n, seed);
  }

  /** `0`, or 1 to `max` digits without a leading zero; -1 for anything else. */
  static long number(String s, int max) {
    if (s.isEmpty() || s.length() > max || (s.length() > 1 && s.charAt(0) == '0')) {
      return -1;
    }
    long v = 0;
    for (int i = 0; i < s.length(); i++) {
      char c = s.charAt(i);
      if (c < '0' || c > '9') {
        return -1;
      }
      v = v * 10 + (c - '0');
    }
    return v;
  }

  /** Lower-case hex to bytes, or null. */
  static byte[] hex(String s) {
    if (s.length() % 2 != 0) {
      return null;
    }
    byte[] out = new byte[s.length() / 2];
    for (int i = 0; i < out.length; i++) {
      int hi = digit(s.charAt(2 * i));
      int lo = digit(s.charAt(2 * i + 1));
      if (hi < 0 || lo < 0) {
        return null;
      }
      out[i] = (byte) (hi << 4 | lo);
    }
    return out;
  }

  private static int digit(char c) {
    if (c >= '0' && c <= '9') {
      return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
      return c - 'a' + 10;
    }
    return -1;
  }

  static byte[] hello(long pid) {
    return ascii("MVA1 hello java " + pid + " -\n");
  }

  static byte[] ack(long n, String what) {
    return ascii("MVA1 ack " + n + " " + what + "\n");
  }

  private static byte[] ascii(String s) {
    return s.getBytes(StandardCharsets.US_ASCII);
  }
}
