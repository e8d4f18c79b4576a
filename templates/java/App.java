// A clone-safe Java app for microvm-agent (JDK only: com.sun.net.httpserver).
//
// The trap: a java.util.Random (or a SecureRandom DRBG/SHA1PRNG instance) created during the image
// build keeps its state in the snapshot, and every clone draws the same numbers. The fix: replace
// it when the agent announces a new generation, seeded from the kernel *and* the agent's
// per-generation seed ("seed" in the event): under the platform's default capabilities and
// without VMGenID the kernel can hand every clone the same bytes, the seed cannot.
import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.ObjectOutputStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.SecureRandom;
import java.util.HexFormat;
import java.util.Random;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

public class App {
    static volatile Random rng = new Random();
    static volatile long generation = 0;

    /** A digest of the generator's state, read by serialising it (nothing is drawn). */
    static String fingerprint() throws Exception {
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        try (ObjectOutputStream out = new ObjectOutputStream(bytes)) {
            out.writeObject(rng);
        }
        byte[] d = MessageDigest.getInstance("SHA-256").digest(bytes.toByteArray());
        return HexFormat.of().formatHex(d, 0, 8);
    }

    /** seed = SHA-256(kernel bytes || agent seed); never throws on a missing or odd seed. */
    static void reseed(String agentSeedHex) throws Exception {
        byte[] os = new byte[32];
        new SecureRandom().nextBytes(os); // NativePRNG: the kernel
        MessageDigest h = MessageDigest.getInstance("SHA-256");
        h.update(os);
        if (agentSeedHex.matches("[0-9a-f]{64}")) {
            h.update(HexFormat.of().parseHex(agentSeedHex));
        }
        rng = new Random(java.nio.ByteBuffer.wrap(h.digest()).getLong());
    }

    static String field(String json, String name) {
        Matcher m = Pattern.compile("\"" + name + "\"\\s*:\\s*\"?([^\",}]*)").matcher(json);
        return m.find() ? m.group(1) : "";
    }

    static void reply(HttpExchange x, int status, String body) throws IOException {
        byte[] data = body.getBytes(StandardCharsets.UTF_8);
        x.getResponseHeaders().set("content-type", "application/json");
        x.sendResponseHeaders(status, data.length);
        x.getResponseBody().write(data);
        x.close();
    }

    public static void main(String[] args) throws Exception {
        int port = Integer.parseInt(System.getenv().getOrDefault("PORT", "8080"));
        HttpServer server = HttpServer.create(new InetSocketAddress("0.0.0.0", port), 0);
        server.createContext("/healthz", x -> reply(x, 200, "{\"ok\":true}"));
        server.createContext("/whoami", x -> {
            try {
                reply(x, 200, String.format("{\"generation\":%d,\"random\":%d,\"fingerprint\":\"%s\"}",
                        generation, rng.nextLong(), fingerprint()));
            } catch (Exception e) {
                reply(x, 500, "{\"error\":\"" + e + "\"}");
            }
        });
        server.createContext("/__lifecycle", x -> {
            try {
                String body = new String(x.getRequestBody().readAllBytes(), StandardCharsets.UTF_8);
                String event = field(body, "event");
                String before = fingerprint();
                if (event.equals("run") || event.equals("resume") || event.equals("validate")) {
                    reseed(field(body, "seed"));
                    generation = Long.parseLong(field(body, "generation"));
                }
                System.out.printf("{\"event\":\"%s\",\"generation\":%s,\"before\":\"%s\",\"after\":\"%s\"}%n",
                        event, field(body, "generation"), before, fingerprint());
                System.out.flush();
                reply(x, 200, "{\"acknowledged\":true}");
            } catch (Exception e) {
                reply(x, 500, "{\"error\":\"" + e + "\"}");
            }
        });
        server.start();
    }
}
