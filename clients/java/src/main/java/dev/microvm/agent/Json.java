package dev.microvm.agent;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * Reads the agent's state-directory JSON (RFC 8259) without a dependency: objects become
 * {@code Map}s, arrays {@code List}s, strings {@code String}s, numbers {@code Double}s (or
 * {@code Long}s when integral and written without a fraction or exponent), {@code true}/{@code
 * false} {@code Boolean}s, {@code null} null. A document that is not valid JSON is an {@code
 * IllegalArgumentException}. Small on purpose: the files are a few hundred bytes, and a reader
 * that only searched for a key's text would take a nested object's key, or a key inside a string,
 * for the file's own.
 */
final class Json {
  private final String s;
  private int at;

  private Json(String s) {
    this.s = s;
  }

  static Object parse(String text) {
    Json p = new Json(text);
    p.space();
    Object v = p.value(0);
    p.space();
    if (p.at != p.s.length()) throw p.error("text after the value");
    return v;
  }

  private IllegalArgumentException error(String what) {
    return new IllegalArgumentException("not JSON: " + what + " at " + at);
  }

  private void space() {
    while (at < s.length() && " \t\r\n".indexOf(s.charAt(at)) >= 0) at++;
  }

  private char peek() {
    if (at >= s.length()) throw error("the end");
    return s.charAt(at);
  }

  private void expect(char c) {
    if (peek() != c) throw error("'" + c + "' expected");
    at++;
  }

  private Object value(int depth) {
    if (depth > 64) throw error("nesting");
    char c = peek();
    switch (c) {
      case '{':
        return object(depth);
      case '[':
        return array(depth);
      case '"':
        return string();
      case 't':
        return word("true", Boolean.TRUE);
      case 'f':
        return word("false", Boolean.FALSE);
      case 'n':
        return word("null", null);
      default:
        return number();
    }
  }

  private Object word(String w, Object v) {
    if (!s.startsWith(w, at)) throw error(w + " expected");
    at += w.length();
    return v;
  }

  private Map<String, Object> object(int depth) {
    Map<String, Object> m = new LinkedHashMap<>();
    expect('{');
    space();
    if (peek() == '}') {
      at++;
      return m;
    }
    while (true) {
      space();
      String k = string();
      space();
      expect(':');
      space();
      m.put(k, value(depth + 1));
      space();
      if (peek() == ',') {
        at++;
        continue;
      }
      expect('}');
      return m;
    }
  }

  private List<Object> array(int depth) {
    List<Object> l = new ArrayList<>();
    expect('[');
    space();
    if (peek() == ']') {
      at++;
      return l;
    }
    while (true) {
      space();
      l.add(value(depth + 1));
      space();
      if (peek() == ',') {
        at++;
        continue;
      }
      expect(']');
      return l;
    }
  }

  private String string() {
    expect('"');
    StringBuilder b = new StringBuilder();
    while (true) {
      char c = peek();
      at++;
      if (c == '"') return b.toString();
      if (c < 0x20) throw error("a control character in a string");
      if (c != '\\') {
        b.append(c);
        continue;
      }
      char e = peek();
      at++;
      switch (e) {
        case '"', '\\', '/' -> b.append(e);
        case 'b' -> b.append('\b');
        case 'f' -> b.append('\f');
        case 'n' -> b.append('\n');
        case 'r' -> b.append('\r');
        case 't' -> b.append('\t');
        case 'u' -> {
          if (at + 4 > s.length()) throw error("a short \\u escape");
          try {
            b.append((char) Integer.parseInt(s.substring(at, at + 4), 16));
          } catch (NumberFormatException x) {
            throw error("a bad \\u escape");
          }
          at += 4;
        }
        default -> throw error("a bad escape");
      }
    }
  }

  private Object number() {
    int start = at;
    if (at < s.length() && s.charAt(at) == '-') at++;
    int digits = at;
    while (at < s.length() && s.charAt(at) >= '0' && s.charAt(at) <= '9') at++;
    if (at == digits || (s.charAt(digits) == '0' && at - digits > 1)) throw error("a number expected");
    boolean integral = true;
    if (at < s.length() && s.charAt(at) == '.') {
      integral = false;
      at++;
      int frac = at;
      while (at < s.length() && s.charAt(at) >= '0' && s.charAt(at) <= '9') at++;
      if (at == frac) throw error("digits after '.' expected");
    }
    if (at < s.length() && (s.charAt(at) == 'e' || s.charAt(at) == 'E')) {
      integral = false;
      at++;
      if (at < s.length() && (s.charAt(at) == '+' || s.charAt(at) == '-')) at++;
      int exp = at;
      while (at < s.length() && s.charAt(at) >= '0' && s.charAt(at) <= '9') at++;
      if (at == exp) throw error("an exponent expected");
    }
    String n = s.substring(start, at);
    if (integral) {
      try {
        return Long.parseLong(n);
      } catch (NumberFormatException x) {
        // Larger than a long: a double, as every other reader of JSON makes it.
      }
    }
    return Double.parseDouble(n);
  }
}
