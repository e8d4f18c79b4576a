package dev.microvm.reseed;

import java.io.ByteArrayOutputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.util.Set;

/**
 * Inserts one call, {@code <owner>.drew(this)}, at the start of some methods of a class file:
 * how this helper learns of the {@code SecureRandom} objects the app draws from (it cannot list
 * them otherwise). The smallest edit that keeps a class valid: two instructions at offset 0
 * ({@code aload_0; invokestatic}, 4 bytes), six constants appended to the pool, and every offset
 * after 0 moved by 4 (exception table, the first stack-map frame, line and local-variable
 * tables; branches are relative, and a switch's padding stays aligned since 4 is its
 * alignment). Anything it does not know how to move (another attribute in the method's code)
 * leaves the class as it is: the JVM also verifies the result, and a class it refuses stays as
 * it was. Also renames a class ({@link #renamed}), for the {@link Hook}.
 */
final class ClassPatch {
  private ClassPatch() {}

  static final String HOOK = "drew";
  static final String HOOK_TYPE = "(Ljava/lang/Object;)V";
  private static final int INSERTED = 4;

  /**
   * The class with a call to {@code owner.drew(Object)} (a class name as the class file writes
   * it, {@code a/b/C}) inserted in every method whose name + descriptor is in {@code methods}
   * (for example {@code "nextBytes([B)V"}), or null when it is already patched, has none of
   * them, or has a shape this patch leaves alone.
   */
  static byte[] insert(byte[] classFile, Set<String> methods, String owner) {
    try {
      return new ClassPatch.Run(classFile).patch(methods, owner);
    } catch (RuntimeException | IOException e) {
      return null;
    }
  }

  /**
   * The class with every constant that reads {@code from} (its own name, as the class file
   * writes it) reading {@code to} instead, or null when it has none or is not a class this
   * reads. For a class that names itself only through its class constant (no descriptor of its
   * own type), as {@link Hook}.
   */
  static byte[] renamed(byte[] classFile, String from, String to) {
    try {
      Run r = new ClassPatch.Run(classFile);
      int poolEnd = r.pool();
      if (poolEnd < 0) {
        return null;
      }
      ByteArrayOutputStream buf = new ByteArrayOutputStream(classFile.length + to.length());
      DataOutputStream out = new DataOutputStream(buf);
      int copied = 0;
      boolean found = false;
      for (int i = 1; i < r.count; i++) {
        if (from.equals(r.utf8[i])) {
          out.write(classFile, copied, r.at[i] - copied);
          out.writeByte(1);
          out.writeUTF(to);
          copied = r.at[i] + 3 + (((classFile[r.at[i] + 1] & 0xff) << 8) | (classFile[r.at[i] + 2] & 0xff));
          found = true;
        }
      }
      out.write(classFile, copied, classFile.length - copied);
      return found ? buf.toByteArray() : null;
    } catch (RuntimeException | IOException e) {
      return null;
    }
  }

  private static final class Run {
    final ByteBuffer in;
    final byte[] bytes;
    String[] utf8;
    /** Where each text constant starts (its tag). */
    int[] at;
    int count;

    Run(byte[] classFile) {
      bytes = classFile;
      in = ByteBuffer.wrap(classFile);
    }

    /** Reads the constant pool; returns where it ends, or -1 when this is not a class it reads. */
    int pool() {
      if (in.getInt() != 0xCAFEBABE) {
        return -1;
      }
      in.getShort(); // minor
      in.getShort(); // major
      count = u2();
      utf8 = new String[count];
      at = new int[count];
      for (int i = 1; i < count; i++) {
        at[i] = in.position();
        int tag = u1();
        switch (tag) {
          case 1:
            int len = u2();
            utf8[i] = modifiedUtf8(len);
            break;
          case 3: case 4: case 9: case 10: case 11: case 12: case 17: case 18:
            skip(4);
            break;
          case 5: case 6:
            skip(8);
            i++;
            break;
          case 7: case 8: case 16: case 19: case 20:
            skip(2);
            break;
          case 15:
            skip(3);
            break;
          default:
            return -1;
        }
      }
      return in.position();
    }

    byte[] patch(Set<String> methods, String owner) throws IOException {
      int poolEnd = pool();
      if (poolEnd < 0) {
        return null;
      }
      for (String s : utf8) {
        if (owner.equals(s)) {
          return null; // already ours
        }
      }
      int methodref = count + 5;

      ByteArrayOutputStream buf = new ByteArrayOutputStream(bytes.length + 256);
      DataOutputStream out = new DataOutputStream(buf);
      out.write(bytes, 0, 8);
      out.writeShort(count + 6);
      out.write(bytes, 10, poolEnd - 10);
      out.writeByte(1);
      out.writeUTF(owner); // count
      out.writeByte(7);
      out.writeShort(count); // count + 1: the class
      out.writeByte(1);
      out.writeUTF(HOOK); // count + 2
      out.writeByte(1);
      out.writeUTF(HOOK_TYPE); // count + 3
      out.writeByte(12);
      out.writeShort(count + 2);
      out.writeShort(count + 3); // count + 4: name and type
      out.writeByte(10);
      out.writeShort(count + 1);
      out.writeShort(count + 4); // count + 5: the method

      int from = in.position();
      skip(6); // access, this, super
      skip(2 * u2()); // interfaces
      members(); // fields
      out.write(bytes, from, in.position() - from);
      int methodCount = u2();
      out.writeShort(methodCount);
      int patched = 0;
      for (int m = 0; m < methodCount; m++) {
        int start = in.position();
        int access = u2();
        String name = utf8[u2()];
        String type = utf8[u2()];
        boolean wanted = (access & 0x0008) == 0 && methods.contains(name + type);
        if (!wanted) {
          attributes();
          out.write(bytes, start, in.position() - start);
          continue;
        }
        out.write(bytes, start, 6);
        int attrs = u2();
        out.writeShort(attrs);
        for (int a = 0; a < attrs; a++) {
          int nameIndex = u2();
          int len = in.getInt();
          int body = in.position();
          skip(len);
          if (!"Code".equals(utf8[nameIndex])) {
            out.write(bytes, body - 6, len + 6);
            continue;
          }
          byte[] code = code(body, len, methodref);
          if (code == null) {
            return null;
          }
          out.writeShort(nameIndex);
          out.writeInt(code.length);
          out.write(code);
          patched++;
        }
      }
      out.write(bytes, in.position(), bytes.length - in.position());
      return patched == 0 ? null : buf.toByteArray();
    }

    int u1() {
      return in.get() & 0xff;
    }

    int u2() {
      return in.getShort() & 0xffff;
    }

    void skip(int n) {
      in.position(in.position() + n);
    }

    /** A constant's text; the names this patch compares are ASCII, so bytes as chars do. */
    String modifiedUtf8(int len) {
      char[] c = new char[len];
      for (int i = 0; i < len; i++) {
        c[i] = (char) (in.get() & 0xff);
      }
      return new String(c);
    }

    /** Skips a field or method table. */
    void members() {
      int n = u2();
      for (int i = 0; i < n; i++) {
        skip(6);
        attributes();
      }
    }

    void attributes() {
      int n = u2();
      for (int i = 0; i < n; i++) {
        skip(2);
        skip(in.getInt());
      }
    }

    /** A Code attribute's body with the call inserted, or null. */
    byte[] code(int at, int len, int methodref) throws IOException {
      ByteBuffer c = ByteBuffer.wrap(bytes, at, len).slice();
      int maxStack = c.getShort() & 0xffff;
      int maxLocals = c.getShort() & 0xffff;
      int codeLength = c.getInt();
      int codeAt = c.position();
      c.position(codeAt + codeLength);
      ByteArrayOutputStream buf = new ByteArrayOutputStream(len + 16);
      DataOutputStream out = new DataOutputStream(buf);
      out.writeShort(Math.max(maxStack, 1));
      out.writeShort(maxLocals);
      out.writeInt(codeLength + INSERTED);
      out.writeByte(0x2a); // aload_0
      out.writeByte(0xb8); // invokestatic
      out.writeShort(methodref);
      out.write(bytes, at + codeAt, codeLength);
      int handlers = c.getShort() & 0xffff;
      out.writeShort(handlers);
      for (int i = 0; i < handlers; i++) {
        out.writeShort((c.getShort() & 0xffff) + INSERTED);
        out.writeShort((c.getShort() & 0xffff) + INSERTED);
        out.writeShort((c.getShort() & 0xffff) + INSERTED);
        out.writeShort(c.getShort());
      }
      int attrs = c.getShort() & 0xffff;
      out.writeShort(attrs);
      for (int a = 0; a < attrs; a++) {
        int nameIndex = c.getShort() & 0xffff;
        int alen = c.getInt();
        ByteBuffer body = ByteBuffer.wrap(bytes, at + c.position(), alen).slice();
        c.position(c.position() + alen);
        byte[] moved = moved(utf8[nameIndex], body);
        if (moved == null) {
          return null;
        }
        out.writeShort(nameIndex);
        out.writeInt(moved.length);
        out.write(moved);
      }
      return buf.toByteArray();
    }
  }

  /** One attribute of a method's code with its offsets moved, or null when unknown. */
  static byte[] moved(String name, ByteBuffer b) throws IOException {
    ByteArrayOutputStream buf = new ByteArrayOutputStream(b.remaining() + 2);
    DataOutputStream out = new DataOutputStream(buf);
    if ("LineNumberTable".equals(name)) {
      int n = b.getShort() & 0xffff;
      out.writeShort(n);
      for (int i = 0; i < n; i++) {
        int pc = b.getShort() & 0xffff;
        out.writeShort(pc == 0 ? 0 : pc + INSERTED); // the first line covers the call too
        out.writeShort(b.getShort());
      }
    } else if ("LocalVariableTable".equals(name) || "LocalVariableTypeTable".equals(name)) {
      int n = b.getShort() & 0xffff;
      out.writeShort(n);
      for (int i = 0; i < n; i++) {
        int pc = b.getShort() & 0xffff;
        int length = b.getShort() & 0xffff;
        if (pc == 0) {
          out.writeShort(0);
          out.writeShort(length + INSERTED);
        } else {
          out.writeShort(pc + INSERTED);
          out.writeShort(length);
        }
        out.writeShort(b.getShort());
        out.writeShort(b.getShort());
        out.writeShort(b.getShort());
      }
    } else if ("StackMapTable".equals(name)) {
      // Only the first frame's offset is absolute (later ones are deltas from it).
      int n = b.getShort() & 0xffff;
      out.writeShort(n);
      if (n > 0) {
        int type = b.get() & 0xff;
        if (type <= 63) {
          if (type + INSERTED <= 63) {
            out.writeByte(type + INSERTED);
          } else {
            out.writeByte(251); // same_frame_extended
            out.writeShort(type + INSERTED);
          }
        } else if (type <= 127) {
          if (type - 64 + INSERTED <= 63) {
            out.writeByte(type + INSERTED);
          } else {
            out.writeByte(247); // same_locals_1_stack_item_frame_extended
            out.writeShort(type - 64 + INSERTED);
          }
        } else if (type >= 247) {
          out.writeByte(type);
          out.writeShort((b.getShort() & 0xffff) + INSERTED);
        } else {
          return null; // reserved
        }
      }
      byte[] rest = new byte[b.remaining()];
      b.get(rest);
      out.write(rest);
    } else {
      return null;
    }
    return buf.toByteArray();
  }
}
