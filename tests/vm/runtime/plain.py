"""An unmodified Python app, as an image author writes one: no lifecycle handler, no seed, no
agent library. It warms up before the snapshot (one outbound TLS connection and a few draws),
then serves plain HTTP. GET /probe opens an outbound TLS connection to the guest's ClientHello
recorder (server name: argv[1]) and answers the next value of each generator a Python program
commonly uses. The runtime clone test reads what went on the wire from the recorder.

Single-threaded on purpose (http.server.HTTPServer): every draw comes from the one thread whose
OpenSSL state the snapshot holds, as in the measurements that filed the issue."""

import http.server
import json
import os
import random
import socket
import ssl
import sys
import uuid

NAME = sys.argv[1]
RECORDER = ("127.0.0.1", 8443)
CONTEXT = ssl.create_default_context()
CONTEXT.check_hostname = False
CONTEXT.verify_mode = ssl.CERT_NONE


def hello():
    """One TLS handshake attempt; the recorder closes it after the ClientHello."""
    try:
        with socket.create_connection(RECORDER, timeout=10) as s:
            with CONTEXT.wrap_socket(s, server_hostname=NAME) as t:
                t.do_handshake()
    except (OSError, ssl.SSLError):
        pass


def draws(draw):
    """A generator's next eight draws: the test compares each clone's value with the others'."""
    return [draw() for _ in range(8)]


def values():
    return {
        "ssl.RAND_bytes": draws(lambda: ssl.RAND_bytes(16).hex()),
        "random.random()": draws(lambda: repr(random.random())),
        "os.urandom": draws(lambda: os.urandom(16).hex()),
        "uuid.uuid4()": draws(lambda: str(uuid.uuid4())),
    }


CLAIMS = {
    "ssl.RAND_bytes": "safe",
    "random.random()": "safe",
    "os.urandom": "kernel",
    "uuid.uuid4()": "kernel",
}


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/probe":
            hello()
            body = {"runtime": "unmodified Python %d.%d.%d" % sys.version_info[:3], "values": values(), "claims": CLAIMS}
        else:
            body = {"ok": True}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


hello()
values()
http.server.HTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()
