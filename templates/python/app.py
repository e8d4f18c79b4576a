"""A clone-safe Python app for microvm-agent.

The trap: `random` (and NumPy's global generator) is seeded once, when the module is imported,
during the image build. Every VM cloned from the snapshot starts with the same state and draws
the same "random" numbers. The fix: reseed when the agent announces a new generation, from the
kernel *and* the agent's per-generation seed: under the platform's default capabilities (no
CAP_SYS_ADMIN) and without VMGenID the kernel can hand every clone the same bytes (the agent's
`kernel_crng` says "not-reseeded"), and the seed, keyed from what differs per clone, cannot.
`secrets`, `os.urandom` and `uuid.uuid4()` read the kernel on every call: safe only where
`kernel_crng` is "reseeded" or "platform".
"""
import hashlib
import json
import os
import random
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(os.environ.get("PORT", "8080"))
STATE_DIR = os.environ.get("MICROVM_AGENT_STATE_DIR", "/run/microvm-agent")
generation = 0


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
    random.seed(os.urandom(32) + agent_seed)
    # With NumPy: np.random.seed(int.from_bytes(hashlib.sha256(os.urandom(32) + agent_seed)
    # .digest()[:4], "little")), and replace any np.random.default_rng() you keep the same way.


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz":
            return self.reply(200, {"ok": True})
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


ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()
