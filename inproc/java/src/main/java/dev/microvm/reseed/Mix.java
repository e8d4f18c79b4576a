package dev.microvm.reseed;

import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;

/**
 * The protocol's one mixing rule (inproc/PROTOCOL.md, "Mixing"; checked against
 * testdata/mix.tsv): material = seed || pid (u32 LE) || n (u64 LE) || fresh; mix =
 * SHA-256(material). This helper needs bytes, so it takes the mix, and derives one value per
 * generator from it ({@link #derive}) so that no two generators are seeded alike.
 */
final class Mix {
  private Mix() {}

  static byte[] material(byte[] seed, long pid, long n, byte[] fresh) {
    byte[] m = new byte[44 + fresh.length];
    System.arraycopy(seed, 0, m, 0, 32);
    for (int i = 0; i < 4; i++) {
      m[32 + i] = (byte) (pid >>> (8 * i));
    }
    for (int i = 0; i < 8; i++) {
      m[36 + i] = (byte) (n >>> (8 * i));
    }
    System.arraycopy(fresh, 0, m, 44, fresh.length);
    return m;
  }

  static byte[] mix(byte[] seed, long pid, long n, byte[] fresh) {
    return sha256(material(seed, pid, n, fresh));
  }

  /** SHA-256(mix || label || counter): one generator's bytes. */
  static byte[] derive(byte[] mix, String label, long counter) {
    MessageDigest d = digest();
    d.update(mix);
    for (int i = 0; i < label.length(); i++) {
      d.update((byte) label.charAt(i));
    }
    for (int i = 0; i < 8; i++) {
      d.update((byte) (counter >>> (8 * i)));
    }
    return d.digest();
  }

  static long derive64(byte[] mix, String label, long counter) {
    byte[] b = derive(mix, label, counter);
    long v = 0;
    for (int i = 0; i < 8; i++) {
      v |= (b[i] & 0xffL) << (8 * i);
    }
    return v;
  }

  static byte[] sha256(byte[] data) {
    return digest().digest(data);
  }

  private static MessageDigest digest() {
    try {
      return MessageDigest.getInstance("SHA-256");
    } catch (NoSuchAlgorithmException e) {
      // Every Java platform must offer SHA-256 (MessageDigest's documentation).
      throw new IllegalStateException(e);
    }
  }
}
