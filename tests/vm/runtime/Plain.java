// An unmodified Java app, as an image author writes one: no lifecycle handler, no seed, no agent
// library, the JDK's defaults. It warms up before the snapshot (one outbound TLS connection
// through the default SSLContext, and a draw from each generator it keeps), then serves plain
// HTTP on its main thread. GET /probe opens an outbound TLS connection to the guest's ClientHello
// recorder (server name: args[0]) and answers the next value of each generator a Java program
// commonly uses. The runtime clone test reads what went on the wire from the recorder.

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.security.SecureRandom;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.ThreadLocalRandom;
import javax.net.ssl.SNIHostName;
import javax.net.ssl.SSLParameters;
import javax.net.ssl.SSLSocket;
import javax.net.ssl.SSLSocketFactory;

public class Plain {
  static String name;
  // Kept from start-up, as apps keep them in a field.
  static final SecureRandom KEPT = new SecureRandom();
  static final SecureRandom DRBG;

  static {
    try {
      DRBG = SecureRandom.getInstance("DRBG");
    } catch (Exception e) {
      throw new IllegalStateException(e);
    }
  }

  /** One TLS handshake attempt; the recorder closes it after the ClientHello. */
  static void hello() {
    try (SSLSocket s = (SSLSocket) SSLSocketFactory.getDefault().createSocket("127.0.0.1", 8443)) {
      s.setSoTimeout(10000);
      SSLParameters p = s.getSSLParameters();
      p.setServerNames(List.of(new SNIHostName(name)));
      s.setSSLParameters(p);
      s.startHandshake();
    } catch (Exception e) {
      // Expected: the recorder answers nothing.
    }
  }

  static String hex(SecureRandom r) {
    byte[] b = new byte[16];
    r.nextBytes(b);
    return HexFormat.of().formatHex(b);
  }

  /** A generator's next eight draws: the test compares each clone's value with the others'. */
  interface Draw {
    String next();
  }

  static List<String> draws(Draw d) {
    List<String> out = new ArrayList<>();
    for (int i = 0; i < 8; i++) {
      out.add(d.next());
    }
    return out;
  }

  static Map<String, List<String>> values() {
    Map<String, List<String>> v = new LinkedHashMap<>();
    v.put("UUID.randomUUID()", draws(() -> UUID.randomUUID().toString()));
    v.put("new SecureRandom() kept", draws(() -> hex(KEPT)));
    v.put("SecureRandom DRBG kept", draws(() -> hex(DRBG)));
    v.put("ThreadLocalRandom", draws(() -> Long.toString(ThreadLocalRandom.current().nextLong())));
    v.put("Math.random()", draws(() -> Double.toString(Math.random())));
    return v;
  }

  /** What the agent claims for each (the runtime clone test's words). NativePRNG's output is its
   *  state, which the Java agent reseeds, XOR bytes of /dev/urandom: "mixed". */
  static Map<String, String> claims() {
    Map<String, String> c = new LinkedHashMap<>();
    for (String k : values().keySet()) {
      c.put(k, "safe");
    }
    for (String k : List.of("UUID.randomUUID()", "new SecureRandom() kept",
        "TLS ClientHello: random", "TLS ClientHello: session id", "TLS ClientHello: key share")) {
      c.put(k, "mixed");
    }
    return c;
  }

  static String json(Map<String, ?> m) {
    StringBuilder b = new StringBuilder("{");
    for (Map.Entry<String, ?> e : m.entrySet()) {
      if (b.length() > 1) {
        b.append(',');
      }
      b.append('"').append(e.getKey()).append("\":");
      if (e.getValue() instanceof List) {
        b.append('[');
        List<?> l = (List<?>) e.getValue();
        for (int i = 0; i < l.size(); i++) {
          b.append(i > 0 ? "," : "").append('"').append(l.get(i)).append('"');
        }
        b.append(']');
      } else {
        b.append('"').append(e.getValue()).append('"');
      }
    }
    return b.append('}').toString();
  }

  public static void main(String[] args) throws Exception {
    name = args[0];
    hello();
    Map<String, String> claims = claims();
    try (ServerSocket server = new ServerSocket(Integer.parseInt(System.getenv("PORT")))) {
      while (true) {
        try (Socket c = server.accept()) {
          BufferedReader in =
              new BufferedReader(new InputStreamReader(c.getInputStream(), StandardCharsets.US_ASCII));
          String request = in.readLine();
          for (String h = in.readLine(); h != null && !h.isEmpty(); h = in.readLine()) {
            // headers
          }
          String body;
          if (request != null && request.split(" ").length > 1 && request.split(" ")[1].equals("/probe")) {
            hello();
            body = "{\"runtime\":\"unmodified Java " + Runtime.version() + "\",\"values\":"
                + json(values()) + ",\"claims\":" + json(claims) + "}";
          } else {
            body = "{\"ok\":true}";
          }
          byte[] data = body.getBytes(StandardCharsets.UTF_8);
          OutputStream out = c.getOutputStream();
          out.write(("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
              + data.length + "\r\nconnection: close\r\n\r\n").getBytes(StandardCharsets.US_ASCII));
          out.write(data);
        } catch (Exception e) {
          // The next request.
        }
      }
    }
  }
}
