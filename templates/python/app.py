"""A clone-safe Python app for microvm-agent, on its client library (`microvm_agent`).

The trap: `random` (and NumPy's global generator) is seeded once, when the module is imported,
during the image build. Every VM cloned from the snapshot starts with the same state and draws
the same "random" numbers. The agent's in-process helper already reseeds the module-level
`random` and `ssl` in every clone (on by default); what only the app can do is its own part,
registered with `@microvm_agent.on_new_generation`: the callback runs in every clone before the
agent answers `/run` (and on every `/resume`), and reseeds from the kernel *and* the agent's
seed: under the platform's default capabilities (no
CAP_SYS_ADMIN) and without VMGenID the kernel can hand every clone the same bytes (the agent's
`kernel_crng` says "not-reseeded"), and the seed, keyed from what differs per clone, cannot.
`secrets`, `os.urandom` and `uuid.uuid4()` read the kernel on every call: safe only where
`kernel_crng` is "reseeded" or "platform". `ssl.RAND_bytes()` draws from OpenSSL's generator in
this process (cloned state too): the handler feeds it the same mix with `ssl.RAND_add()`.
A `random.Random()` made at import (yours or a library's) is cloned state that nothing reseeds
unless your handler does: reseed every instance you keep, as `reseed()` does for `random`.

GET /probe answers the next value of each common generator and what this template claims for it
("safe": different in every clone after /run and /resume; "kernel": safe only where the kernel
was reseeded; "none": not clone-safe). tests/vm/runtime_vm.rs measures them in real clones.
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

import microvm_agent  # clients/python: copied next to this file (see the Dockerfile)

PORT = int(os.environ.get("PORT", "8080"))
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


@microvm_agent.on_new_generation
def fresh(gen):
    """Every clone's /run, every /resume: runs before the agent answers the hook."""
    global generation
    before = fingerprint()
    # random.seed(os.urandom(32) + the agent's seed): the library's mix. Every random.Random()
    # and NumPy generator you keep goes in the same call: microvm_agent.reseed(random, mine, rng).
    microvm_agent.reseed(random)
    # OpenSSL's generator (the helper does this too; here for an image that turns it off).
    ssl.RAND_add(microvm_agent.seed_material(), 32.0)
    generation = gen.number
    print(json.dumps({"event": gen.reason, "generation": gen.number,
                      "before": before, "after": fingerprint()}), flush=True)


@microvm_agent.on_suspend
def suspending(gen):
    """Before the VM is frozen (on_terminate: before the app is stopped)."""
    print(json.dumps({"event": "suspend", "generation": gen.number}), flush=True)


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

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


# Run the callback's work once before the snapshot, so that a clone's first event does not pay
# for it inside /run's budget (measured under emulation: the first reseed took ~300 ms).
microvm_agent.reseed()
ssl.RAND_add(microvm_agent.seed_material(), 32.0)
ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()
