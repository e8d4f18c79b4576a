"""An app that implements the platform's lifecycle hooks itself, behind microvm-agent.

Apps written for Lambda MicroVMs often already answer /run, /resume, /suspend and /terminate.
With `[notify] forward = "http://127.0.0.1:8080"` the agent stays the image's ENTRYPOINT (PID 1,
the supervisor, the new-generation routine) and passes every hook on to this app, on the same
path, after its own work: the /run body arrives exactly as the platform sent it. The app's 2xx is
its acknowledgement; what it answers is folded into the agent's answer.
"""
import json
import os
import random
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(os.environ.get("PORT", "8080"))
STATE_DIR = os.environ.get("MICROVM_AGENT_STATE_DIR", "/run/microvm-agent")
# For the test of the template: what this app answers to /run.
RUN_STATUS = int(os.environ.get("RUN_STATUS", "200"))


def reseed():
    # The agent's per-generation seed, mixed with the kernel's bytes (see the Python template).
    try:
        with open(os.path.join(STATE_DIR, "seed"), "rb") as f:
            seed = f.read()
    except OSError:
        seed = b""
    random.seed(os.urandom(32) + seed)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/healthz":
            return self.reply(200, {"ok": True})
        self.reply(404, {"error": "not found"})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        hook = self.path.rsplit("/", 1)[-1]
        if hook not in ("validate", "run", "resume", "suspend", "terminate"):
            return self.reply(404, {"error": "not found"})
        status = 200
        seen = {"hook": hook, "path": self.path}
        if hook == "run":
            request = json.loads(body or b"{}")
            seen["microvmId"] = request.get("microvmId")
            seen["payload"] = request.get("runHookPayload")
            status = RUN_STATUS
        if hook in ("validate", "run", "resume"):
            reseed()  # the agent has already made the new generation and written the seed
        print(json.dumps(seen), flush=True)
        self.reply(status, {"hook": hook, "ok": status == 200})

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
