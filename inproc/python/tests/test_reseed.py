"""The Python helper against the protocol (inproc/PROTOCOL.md), in its own runner.

The agent side here is a plain Unix socket the test drives; the real agent runs the same
helper in tests/blackbox/in_process_reseed.rs (Rust), and in real clones in tests/vm/runtime_vm.rs."""

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


TESTDATA = os.path.join(os.path.dirname(__file__), "..", "..", "..", "testdata")


def vectors(name):
    """The records of one of the protocol's conformance files (``testdata/``), as lists of fields."""
    with open(os.path.join(TESTDATA, name), encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t") for line in f if not line.startswith("#")]


def test_parse_reads_the_agents_lines_as_the_vectors_say():
    records = vectors("lines.tsv")
    assert len(records) >= 20
    for line_hex, expect in records:
        line = bytes.fromhex(line_hex)
        want = None
        if expect.startswith("generation "):
            _, n, seed, _ms = expect.split(" ")
            want = (int(n), bytes.fromhex(seed))
        assert helper.parse(line) == want, line


def test_material_is_laid_out_as_the_vectors_say():
    for seed, pid, n, fresh, material, _mix in vectors("mix.tsv"):
        got = helper.mix_material(bytes.fromhex(seed), int(pid), int(n), bytes.fromhex(fresh))
        assert got.hex() == material


def test_reseed_moves_the_module_level_random_off_its_seeded_sequence():
    random.seed(1)
    random.random()
    what = helper.reseed(b"\x01" * 32, 1)
    assert "random" in what.split(",")
    assert random.random() != SEED_1_SECOND


def test_the_same_agent_bytes_still_give_each_process_its_own_state():
    # The pid and clock readings are mixed in: two processes (or two calls) given the same seed
    # by the agent still differ.
    helper.reseed(b"\x02" * 32, 1)
    a = random.random()
    helper.reseed(b"\x02" * 32, 1)
    assert random.random() != a


def test_random_is_reseeded_before_anything_lets_another_thread_run(monkeypatch):
    # A system call releases the GIL: the app's main thread could then draw from the snapshot's
    # generator before this one reseeded it. So nothing that makes one runs before `random` is
    # reseeded (os.urandom stands for them: it is what the helper called first before).
    random.seed(1)
    random.random()
    seen = []
    real = os.urandom

    def urandom(n):
        seen.append(random.getstate())
        return real(n)

    monkeypatch.setattr(helper.os, "urandom", urandom)
    import ssl  # noqa: F401  (so that the OpenSSL step, which does call it, runs)

    helper.reseed(b"\x03" * 32, 1)
    random.seed(1)
    random.random()
    snapshot = random.getstate()
    assert seen, "the OpenSSL step mixes the kernel's bytes"
    assert all(state != snapshot for state in seen), "os.urandom ran before random was reseeded"


def test_ssl_is_reseeded_when_loaded():
    import ssl  # noqa: F401

    assert "ssl" in helper.reseed(b"\x03" * 32, 1).split(",")


class FakeAgent:
    """A socket the test drives, standing in for the agent's (the real one: tests/blackbox/in_process_reseed.rs)."""

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


def test_seccomp_mode_is_read_from_the_status():
    assert helper.seccomp_mode(b"Name:\tx\nSeccomp:\t0\nSeccomp_filters:\t0\n") == b"0"
    assert helper.seccomp_mode(b"Name:\tx\nSeccomp:\t2\n") == b"2"
    assert helper.seccomp_mode(b"Name:\tx\n") is None
    assert not helper.filtered(), "this test runs under no filter"


# kill_socket.py installs a seccomp filter that kills the process on socket(2) (the shape of a
# common job sandbox; it runs with -S, without the helper), then execs the job with the helper on.
KILL_SOCKET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kill_socket.py")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="seccomp is Linux's")
def test_a_job_under_a_seccomp_filter_runs_to_completion():
    with tempfile.TemporaryDirectory() as d:
        agent = FakeAgent(os.path.join(d, "s"))
        env = {**os.environ, "PYTHONPATH": HERE, "MICROVM_AGENT_INPROC": agent.path}
        r = subprocess.run(
            [sys.executable, "-S", KILL_SOCKET, sys.executable, "-c", "import time; time.sleep(0.3); print('done')"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert (r.returncode, r.stdout) == (0, "done\n"), r.stderr
        agent.server.settimeout(0.2)
        with pytest.raises(socket.timeout):
            agent.accept()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_descriptor_the_app_reused_is_never_written_read_or_closed():
    # A daemon closes every descriptor above 2 and opens its data file, which gets the number
    # the helper's socket had. The generation that arrives next must not touch that file.
    with tempfile.TemporaryDirectory() as d:
        agent = FakeAgent(os.path.join(d, "s"))
        data = os.path.join(d, "data")
        with open(data, "wb") as f:
            f.write(b"the app's data\n")
        script = (
            "import os, sys, time; sys.path.insert(0, %r); import _microvm_reseed as h; h.start()\n"
            "while h._conn is None: time.sleep(0.01)\n"
            "time.sleep(0.2)\n"
            "mine = h._conn[0].fileno()\n"
            "os.closerange(3, 1024)\n"
            "fd = os.open(%r, os.O_RDWR)\n"
            "assert fd == mine, (fd, mine)\n"
            "print('reused', flush=True)\n"
            "time.sleep(1.5)\n"
            "os.lseek(fd, 0, 0)\n"
            "print(os.read(fd, 100).decode().strip(), flush=True)\n" % (HERE, data)
        )
        p = subprocess.Popen(
            [sys.executable, "-c", script],
            env={**os.environ, "MICROVM_AGENT_INPROC": agent.path},
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            f, conn = agent.accept()
            assert f.readline().startswith(b"MVA1 hello python")
            assert p.stdout.readline() == "reused\n"
            f.write(b"MVA1 generation 5 " + os.urandom(32).hex().encode() + b"\n")
            out, _ = p.communicate(timeout=30)
            assert p.returncode == 0, out
            assert out == "the app's data\n", "the helper read from or wrote to the app's file"
            with open(data, "rb") as g:
                assert g.read() == b"the app's data\n"
        finally:
            p.kill()
            p.wait()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_launcher_that_forks_and_exits_leaves_no_connection_behind():
    # The parent's connection is closed in the forked child: when the launcher exits, the
    # agent sees its connection end although the worker lives on.
    with tempfile.TemporaryDirectory() as d:
        agent = FakeAgent(os.path.join(d, "s"))
        script = (
            "import os, sys, time; sys.path.insert(0, %r); import _microvm_reseed as h; h.start()\n"
            "while h._conn is None: time.sleep(0.01)\n"
            "time.sleep(0.2)\n"
            "if os.fork() == 0:\n"
            "    time.sleep(10); os._exit(0)\n"
            "os._exit(0)\n" % HERE
        )
        p = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "MICROVM_AGENT_INPROC": agent.path})
        try:
            f, conn = agent.accept()
            assert f.readline() == b"MVA1 hello python %d\n" % p.pid
            p.wait(timeout=10)
            assert f.readline() == b"", "the launcher's connection outlived it (held by its child)"
            f2, _ = agent.accept()
            assert f2.readline().startswith(b"MVA1 hello python ")
        finally:
            p.kill()
            p.wait()
            subprocess.run(["pkill", "-f", "time.sleep\\(10\\)"], check=False)
