"""The Python helper against the protocol (inproc/PROTOCOL.md), in its own runner.

The agent side here is a plain Unix socket the test drives; the real agent runs the same
helper in tests/inproc.rs (Rust), and in real clones in tests/runtime_vm.rs."""

import os
import random
import socket
import subprocess
import sys
import tempfile
import threading

import pytest

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)

import _microvm_reseed as helper  # noqa: E402

SEED_1_SECOND = 0.8474337369372327


def test_parse_accepts_only_a_version_1_generation_line():
    good = b"MVA1 generation 7 " + b"ab" * 32
    assert helper.parse(good) == (7, bytes([0xAB]) * 32)
    for bad in [
        b"MVA2 generation 7 " + b"ab" * 32,
        b"MVA1 generation x " + b"ab" * 32,
        b"MVA1 generation 7 " + b"ab" * 31,
        b"MVA1 generation 7 " + b"zz" * 32,
        b"MVA1 ack 7 random",
        b"",
    ]:
        assert helper.parse(bad) is None, bad


def test_reseed_moves_the_module_level_random_off_its_seeded_sequence():
    random.seed(1)
    random.random()
    what = helper.reseed(b"\x01" * 32, 1)
    assert "random" in what.split(",")
    assert random.random() != SEED_1_SECOND


def test_the_same_agent_bytes_still_give_each_process_its_own_state():
    # The kernel's bytes and the pid are mixed in: two processes (or two calls) given the same
    # seed by the agent still differ.
    helper.reseed(b"\x02" * 32, 1)
    a = random.random()
    helper.reseed(b"\x02" * 32, 1)
    assert random.random() != a


def test_ssl_is_reseeded_when_loaded():
    import ssl  # noqa: F401

    assert "ssl" in helper.reseed(b"\x03" * 32, 1).split(",")


class FakeAgent:
    """A socket the test drives, standing in for the agent's (the real one: tests/inproc.rs)."""

    def __init__(self, path):
        self.path = path
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen(4)
        self.server.settimeout(10)

    def accept(self):
        conn, _ = self.server.accept()
        conn.settimeout(10)
        return conn.makefile("rwb", buffering=0), conn


def test_registers_reseeds_and_acknowledges_over_the_socket(monkeypatch):
    with tempfile.TemporaryDirectory() as d:
        agent = FakeAgent(os.path.join(d, "s"))
        monkeypatch.setenv("MICROVM_AGENT_INPROC", agent.path)
        random.seed(1)
        random.random()
        helper.start()
        f, conn = agent.accept()
        assert f.readline() == b"MVA1 hello python %d\n" % os.getpid()
        f.write(b"MVA1 generation 5 " + os.urandom(32).hex().encode() + b"\n")
        ack = f.readline()
        assert ack.startswith(b"MVA1 ack 5 ")
        assert b"random" in ack
        assert random.random() != SEED_1_SECOND
        conn.close()


def run_python(code, env):
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_without_an_agent_the_program_starts_as_if_nothing_were_there():
    r = run_python(
        "print('ok')",
        {"PYTHONPATH": HERE, "MICROVM_AGENT_INPROC": "/nonexistent/socket"},
    )
    assert (r.returncode, r.stdout, r.stderr) == (0, "ok\n", "")


def test_the_images_own_sitecustomize_still_runs():
    with tempfile.TemporaryDirectory() as theirs:
        with open(os.path.join(theirs, "sitecustomize.py"), "w") as f:
            f.write("import builtins; builtins.THEIRS = 'ran'\n")
        r = run_python(
            "import builtins; print(builtins.THEIRS)",
            {"PYTHONPATH": HERE + os.pathsep + theirs, "MICROVM_AGENT_INPROC": ""},
        )
        assert (r.returncode, r.stdout.strip()) == (0, "ran"), r.stderr


def test_a_broken_sitecustomize_of_the_image_is_reported_not_fatal():
    with tempfile.TemporaryDirectory() as theirs:
        with open(os.path.join(theirs, "sitecustomize.py"), "w") as f:
            f.write("raise RuntimeError('theirs is broken')\n")
        r = run_python("print('ok')", {"PYTHONPATH": HERE + os.pathsep + theirs})
        assert r.returncode == 0 and r.stdout == "ok\n"
        assert "theirs is broken" in r.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_forked_child_registers_itself(monkeypatch):
    with tempfile.TemporaryDirectory() as d:
        agent = FakeAgent(os.path.join(d, "s"))
        script = (
            "import os, sys, time; sys.path.insert(0, %r); import _microvm_reseed as h; h.start();"
            "pid = os.fork()\n"
            "if pid == 0: time.sleep(5); os._exit(0)\n"
            "time.sleep(5)" % HERE
        )
        p = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "MICROVM_AGENT_INPROC": agent.path})
        try:
            pids = set()
            for _ in range(2):
                f, _conn = agent.accept()
                hello = f.readline().split()
                assert hello[:3] == [b"MVA1", b"hello", b"python"]
                pids.add(int(hello[3]))
            assert len(pids) == 2 and p.pid in pids
        finally:
            p.kill()
            p.wait()
