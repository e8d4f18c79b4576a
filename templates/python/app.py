"""A clone-safe Python app for microvm-agent.

The trap: `random` (and NumPy's global generator) is seeded once, when the module is imported,
during the image build. Every VM cloned from the snapshot starts with the same state and draws
the same "random" numbers. The fix: reseed when the agent announces a new generation, from the
kernel *and* the agent's per-generation seed: under the platform's default capabilities (no
CAP_SYS_ADMIN) and without VMGenID the kernel can hand every clone the same bytes (the agent's
`kernel_crng` says "not-reseeded"), and the seed, keyed from what differs per clone, cannot.
`secrets`, `os.urandom` and `uuid.uuid4()` read the kernel on every call: safe only where
`kernel_crng` is "reseeded" or "platform". `ssl.RAND_bytes()` draws from OpenSSL's generator in
this process (cloned state too): the handler feeds it the same mix with `ssl.RAND_add()`.
A `random.Random()` made at import (yours or a library's) is cloned state that nothing reseeds
unless your handler does: reseed every instance you keep, as `reseed()` does for `random`.

GET /probe answers the next value of each common generator and what this template claims for it
("safe": different in every clone after /run and /resume; "kernel": safe only where the kernel
was reseeded; "none": not clone-safe). tests/runtime_vm.rs measures them in real clones.
"""
import hashlib
import json
import os
import random
import secrets
import ssl
import sys
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(os.environ.get("PORT", "8080"))
STATE_DIR = os.environ.get("MICROVM_AGENT_STATE_DIR", "/run/microvm-agent")
generation = 0
# A generator made at start-up and never reseeded: what a library keeps (the probe's trap).
STARTUP_RNG = random.Random()
CLAIMS = {
    "random.random()": "safe",
    "random.Random() made at start-up": "none",
    "uuid.uuid4()": "kernel",
    "secrets.token_hex()": "kernel",
    "os.urandom()": "kernel",
    "ssl.RAND_bytes()": "safe",
}


def fingerprint():
    """A short digest of the generator's whole state (without drawing from it)."""
    return hashlib.sha256(repr(random.getstate()).encode()).hexdigest()[:16]


def reseed(agent_seed_hex):
    # seed = hash(os_random || agent_seed): random.seed() hashes bytes with SHA-512.
    agent_seed = bytes.fromhex(agent_seed_hex or "")
    if not agent_seed:  # e.g. told by a signal: the same seed is in the state directory
        try:
            with open(os.path.join(STATE_DIR, "seed"), "rb") as f:
                agent_seed = f.read()
        except OSError:
            agent_seed = b""
    mix = os.urandom(32) + agent_seed
    random.seed(mix)
    # OpenSSL's generator: RAND_add reseeds it with the mix (Python's ssl module, OpenSSL 3).
    ssl.RAND_add(hashlib.sha256(mix).digest(), 32.0)
    # With NumPy: np.random.seed(int.from_bytes(hashlib.sha256(os.urandom(32) + agent_seed)
    # .digest()[:4], "little")), and replace any np.random.default_rng() you keep the same way.


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz":
            return self.reply(200, {"ok": True})
        if self.path == "/probe":
            values = {
                "random.random()": random.random(),
                "random.Random() made at start-up": STARTUP_RNG.random(),
                "uuid.uuid4()": str(uuid.uuid4()),
                "secrets.token_hex()": secrets.token_hex(16),
                "os.urandom()": os.urandom(16).hex(),
                "ssl.RAND_bytes()": ssl.RAND_bytes(16).hex(),
            }
            return self.reply(200, {"runtime": "Python " + sys.version.split()[0],
                                    "generation": generation,
                                    "values": {k: str(v) for k, v in values.items()},
                                    "claims": CLAIMS})
        if self.path == "/whoami":
            return self.reply(200, {"generation": generation, "random": random.random(),
                                    "uuid": str(uuid.uuid4()), "fingerprint": fingerprint(),
                                    "pid": os.getpid()})
        self.reply(404, {"error": "not found"})

    def do_POST(self):
        global generation
        if self.path != "/__lifecycle":
            return self.reply(404, {"error": "not found"})
        length = int(self.headers.get("content-length", "0"))
        event = json.loads(self.rfile.read(length) or b"{}")
        before = fingerprint()
        if event.get("event") in ("run", "resume", "validate"):
            reseed(event.get("seed"))
            generation = event.get("generation", generation)
        print(json.dumps({"event": event.get("event"), "generation": event.get("generation"),
                          "before": before, "after": fingerprint()}), flush=True)
        self.reply(200, {"acknowledged": True})

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


# Run the handler's code once before the snapshot, so that a clone's first event does not pay
# for it inside /run's budget (measured under emulation: the first reseed took ~300 ms).
reseed("")
ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()
