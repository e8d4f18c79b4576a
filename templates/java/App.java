// A clone-safe Java app for microvm-agent, on its client library (dev.microvm.agent.MicroVmAgent,
// clients/java; JDK only: com.sun.net.httpserver).
//
// The trap: a java.util.Random (or a SecureRandom DRBG/SHA1PRNG instance) created during the image
// build keeps its state in the snapshot, and every clone draws the same numbers. The fix: replace
// it in a callback the library runs in every clone before the agent answers /run (and on every
// /resume), seeded from the kernel *and* the agent's seed (MicroVmAgent.seedMaterial()): under
// the platform's default capabilities and without VMGenID the kernel can hand every clone the
// same bytes, the seed cannot. What supports reseed(): a DRBG SecureRandom
// (MicroVmAgent.reseed(drbg): the same mix, as additional input). SHA1PRNG and NativePRNG throw
// UnsupportedOperationException from reseed() (JDK 17): the library uses setSeed on them. The
// default `new SecureRandom()` (NativePRNG) and UUID.randomUUID() read the kernel: safe only
// where the agent's kernel_crng is "reseeded" or "platform". A Random made at start-up that
// nobody replaces (a library's) stays cloned.
//
// GET /probe answers the next value of each common generator and what this template claims for
// it ("safe", "kernel": safe only where the kernel was reseeded, "none"); tests/vm/runtime_vm.rs
// measures them in real clones.
import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import dev.microvm.agent.MicroVmAgent;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.ObjectOutputStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.SecureRandom;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.UUID;
import java.util.HexFormat;
import java.util.Random;

public class App {
    static volatile Random rng = new Random();
    static volatile long generation = 0;
    /** Made at start-up and never replaced: what a library keeps (the probe's trap). */
    static final Random STARTUP_RANDOM = new Random();
    static final SecureRandom STARTUP_SECURE = new SecureRandom();
    static final SecureRandom DRBG = drbg();

    static SecureRandom drbg() {
        try {
            return SecureRandom.getInstance("DRBG");
        } catch (Exception e) {
            throw new IllegalStateException(e);
        }
    }

    static final String[][] CLAIMS = {
        {"Random kept by the app (replaced by the handler)", "safe"},
        {"Random made at start-up", "none"},
        {"new Random()", "none"},
        {"SecureRandom made at start-up (default)", "kernel"},
        {"SecureRandom DRBG made at start-up (reseeded)", "safe"},
        {"UUID.randomUUID()", "kernel"},
    };

    static String probe() {
        Map<String, String> values = new LinkedHashMap<>();
        byte[] b = new byte[16];
        values.put(CLAIMS[0][0], Long.toString(rng.nextLong()));
        values.put(CLAIMS[1][0], Long.toString(STARTUP_RANDOM.nextLong()));
        values.put(CLAIMS[2][0], Long.toString(new Random().nextLong()));
        STARTUP_SECURE.nextBytes(b);
        values.put(CLAIMS[3][0], HexFormat.of().formatHex(b));
        DRBG.nextBytes(b);
        values.put(CLAIMS[4][0], HexFormat.of().formatHex(b));
        values.put(CLAIMS[5][0], UUID.randomUUID().toString());
        StringBuilder v = new StringBuilder();
        StringBuilder c = new StringBuilder();
        for (String[] claim : CLAIMS) {
            v.append(v.length() == 0 ? "" : ",").append('"').append(claim[0]).append("\":\"")
                    .append(values.get(claim[0])).append('"');
            c.append(c.length() == 0 ? "" : ",").append('"').append(claim[0]).append("\":\"")
                    .append(claim[1]).append('"');
        }
        return String.format("{\"runtime\":\"Java %s\",\"generation\":%d,\"values\":{%s},\"claims\":{%s}}",
                System.getProperty("java.runtime.version"), generation, v, c);
    }

    /** A digest of the generator's state, read by serialising it (nothing is drawn). */
    static String fingerprint() throws Exception {
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        try (ObjectOutputStream out = new ObjectOutputStream(bytes)) {
            out.writeObject(rng);
        }
        byte[] d = MessageDigest.getInstance("SHA-256").digest(bytes.toByteArray());
        return HexFormat.of().formatHex(d, 0, 8);
    }

    /** The generator replaced, the DRBG reseeded: each from SHA-256(kernel bytes || agent seed). */
    static void reseed() {
        rng = MicroVmAgent.newRandom();
        MicroVmAgent.reseed(DRBG);
    }

    static void reply(HttpExchange x, int status, String body) throws IOException {
        byte[] data = body.getBytes(StandardCharsets.UTF_8);
        x.getResponseHeaders().set("content-type", "application/json");
        x.sendResponseHeaders(status, data.length);
        x.getResponseBody().write(data);
        x.close();
    }

    /** Every clone's /run, every /resume: runs before the agent answers the hook. */
    static void onNewGeneration(MicroVmAgent.Generation gen) throws Exception {
        String before = fingerprint();
        reseed();
        generation = gen.number();
        System.out.printf("{\"event\":\"%s\",\"generation\":%d,\"before\":\"%s\",\"after\":\"%s\"}%n",
                gen.reason(), gen.number(), before, fingerprint());
        System.out.flush();
    }

    public static void main(String[] args) throws Exception {
        int port = Integer.parseInt(System.getenv().getOrDefault("PORT", "8080"));
        HttpServer server = HttpServer.create(new InetSocketAddress("0.0.0.0", port), 0);
        server.createContext("/healthz", x -> reply(x, 200, "{\"ok\":true}"));
        server.createContext("/probe", x -> reply(x, 200, probe()));
        server.createContext("/whoami", x -> {
            try {
                reply(x, 200, String.format("{\"generation\":%d,\"random\":%d,\"fingerprint\":\"%s\"}",
                        generation, rng.nextLong(), fingerprint()));
            } catch (Exception e) {
                reply(x, 500, "{\"error\":\"" + e + "\"}");
            }
        });
        MicroVmAgent.onNewGeneration(App::onNewGeneration);
        // Before the VM is frozen (onTerminate: before the app is stopped).
        MicroVmAgent.onSuspend(gen -> {
            System.out.printf("{\"event\":\"suspend\",\"generation\":%d}%n", gen.number());
            System.out.flush();
        });
        // Run the callback's work once before the snapshot: a clone's first event must not pay
        // for loading and verifying these classes inside /run's budget (measured: it did not fit
        // in 800 ms on an emulated CPU).
        reseed();
        fingerprint();
        probe();
        server.start();
    }
}
