"""The Python client library: its parts alone, then against the real agent (a new generation and
its acknowledgement, a callback that raises and one that hangs, suspend and terminate)."""

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request

import pytest

import microvm_agent
from microvm_agent import parse

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))


def vectors(name):
    """The records of one of the protocol's conformance files (``testdata/``), as lists of fields."""
    with open(os.path.join(REPO, "testdata", name), encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t") for line in f if not line.startswith("#")]


def test_reads_the_agents_lines_as_the_vectors_say():
    records = vectors("lines.tsv")
    assert len(records) >= 20
    for line_hex, expect in records:
        want = None
        w = expect.split(" ")
        ms = None if w[-1] == "-" else int(w[-1]) if w[0] != "ignore" else None
        if w[0] == "generation":
            want = ("generation", int(w[1]), bytes.fromhex(w[2]), ms)
        elif w[0] == "event":
            want = (w[1], int(w[2]), None, ms)
        line = bytes.fromhex(line_hex)
        assert parse(line) == want, line


def test_mixes_as_the_vectors_say():
    for seed, pid, n, fresh, _material, mixed in vectors("mix.tsv"):
        got = microvm_agent._mix(bytes.fromhex(seed), int(pid), int(n), bytes.fromhex(fresh))
        assert got.hex() == mixed


def test_reads_generation_files_as_the_vectors_say():
    records = vectors("generation.tsv")
    assert len(records) >= 8
    for name, *expect in records:
        with open(os.path.join(REPO, "testdata", "generation", name), "rb") as f:
            g = microvm_agent._parse_generation(f.read())
        if expect == ["reject"]:
            assert g is None, name
            continue
        assert g is not None, name
        got = [str(g.number), g.id, g.reason, "null" if g.microvm_id is None else g.microvm_id, g.kernel_crng]
        assert got == expect, name


def test_a_failure_fits_one_line_and_stays_utf8():
    out = microvm_agent._line(b"MVA1 fail 7 ", "ValueError: " + "\u00e9" * 300 + "\nmore")
    assert len(out) <= 256 and out.endswith(b"\n") and out.count(b"\n") == 1
    out.decode("utf-8")


def test_reseed_makes_a_kept_generator_leave_its_sequence():
    a, b = random.Random(1), random.Random(1)
    assert microvm_agent.reseed(a) == 1
    assert a.random() != b.random()
    with pytest.raises(TypeError):
        microvm_agent.reseed(object())


def test_seed_material_is_32_fresh_bytes():
    a, b = microvm_agent.seed_material(), microvm_agent.seed_material()
    assert len(a) == 32 and a != b


def test_reseed_numpy_generators_when_numpy_is_there():
    np = pytest.importorskip("numpy")
    g, twin = np.random.default_rng(1), np.random.default_rng(1)
    legacy, legacy_twin = np.random.RandomState(1), np.random.RandomState(1)
    microvm_agent.reseed(g, legacy)
    assert g.random() != twin.random()
    assert legacy.random_sample() != legacy_twin.random_sample()


def test_outside_a_microvm_it_does_nothing_and_says_so_once(tmp_path):
    script = tmp_path / "outside.py"
    script.write_text(
        textwrap.dedent(
            """
            import logging, microvm_agent
            logging.basicConfig(level=logging.INFO)
            microvm_agent.on_new_generation(lambda g: None)
            microvm_agent.on_suspend(lambda g: None)
            print(microvm_agent.current(), microvm_agent.seed(), microvm_agent.is_active())
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROVM_AGENT")}
    env["PYTHONPATH"] = SRC
    out = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "None None False"
    assert out.stderr.count("not behind microvm-agent") == 1, out.stderr


# ---- against the real agent ----------------------------------------------------------------


def agent_binary():
    path = os.environ.get("MICROVM_AGENT_BIN") or os.path.join(
        REPO, "target", "debug", "microvm-agent"
    )
    if not os.path.exists(path):
        if os.environ.get("MICROVM_AGENT_REQUIRE_VM"):
            pytest.fail("the agent is not built: " + path)
        pytest.skip("the agent is not built (cargo build): " + path)
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


APP = """
import os, random, sys, time
sys.path.insert(0, {src!r})
import microvm_agent
out = {out!r}
rng = random.Random(1)
first = rng.random()
rng.seed(1)

def write(name, text):
    with open(os.path.join(out, name), "a") as f:
        f.write(text + "\\n")

@microvm_agent.on_new_generation
def first_callback(gen):
    microvm_agent.reseed(rng)
    write("order", "first")

@microvm_agent.on_new_generation
def second_callback(gen):
    write("order", "second")
    write("generations", "%d %s %s" % (gen.number, gen.id, gen.process_seed is not None))
    write("draws", "%r %r" % (first, rng.random()))
    if gen.deadline is not None:
        write("budgets", "%d" % round((gen.deadline - time.monotonic()) * 1000))
    if {mode!r} == "raise" and gen.reason == "run":
        raise RuntimeError("the app's callback broke")
    if {mode!r} == "hang" and gen.reason == "run":
        time.sleep(30)

if {mode!r} == "launcher":
    # A launcher (the app's own child) that registers, forks its worker and exits.
    import subprocess
    subprocess.Popen([sys.executable, "-c", {launcher!r}])

microvm_agent.on_suspend(lambda gen: write("events", "suspend %d" % gen.number))
microvm_agent.on_terminate(lambda gen: write("events", "terminate %d" % gen.number))
write("started", "yes")
while True:
    time.sleep(1)
"""


LAUNCHER = """
import os, sys, time
sys.path.insert(0, {src!r})
import microvm_agent
microvm_agent.on_new_generation(lambda gen: None)
while not microvm_agent.is_active():
    time.sleep(0.01)
if os.fork() == 0:
    while not microvm_agent.is_active():
        time.sleep(0.01)
    open(os.path.join({out!r}, "worker"), "w").write(str(os.getpid()))
    time.sleep(60)
    os._exit(0)
os._exit(0)
"""


class Agent:
    def __init__(self, tmp_path, mode="ok", config=""):
        self.out = tmp_path / "out"
        self.out.mkdir()
        self.port = free_port()
        app = tmp_path / "app.py"
        app.write_text(APP.format(src=SRC, out=str(self.out), mode=mode, launcher=LAUNCHER.format(src=SRC, out=str(self.out))))
        conf = tmp_path / "agent.toml"
        conf.write_text("[hooks]\nrun_timeout = \"2s\"\n" + config)
        env = dict(os.environ)
        env.pop("MICROVM_AGENT_INPROC", None)
        env["MICROVM_AGENT_LOG"] = "warn"
        self.proc = subprocess.Popen(
            [
                agent_binary(),
                "--listen", "127.0.0.1:%d" % self.port,
                "--state-dir", str(tmp_path / "state"),
                "--log-format", "text",
                "-c", str(conf),
                "--", sys.executable, str(app),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.wait_for(lambda: self.read("started"), "the app to start")
        # Registered with the agent (its hello is on the socket before the first hook).
        self.wait_for(
            lambda: any(p["kind"] == "app" for p in self.status()["inproc"]["processes"]),
            "the library to register",
        )

    def hook(self, path):
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (self.port, path), method="POST", data=b"")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def status(self):
        with urllib.request.urlopen("http://127.0.0.1:%d/status" % self.port, timeout=10) as r:
            return json.loads(r.read())

    def read(self, name):
        try:
            return (self.out / name).read_text().splitlines()
        except FileNotFoundError:
            return []

    def wait_for(self, what, why, limit=20):
        deadline = time.time() + limit
        while time.time() < deadline:
            try:
                v = what()
            except OSError:
                v = None
            if v:
                return v
            time.sleep(0.05)
        raise AssertionError("waited for %s" % why)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def agent(tmp_path):
    started = []

    def start(**kw):
        a = Agent(tmp_path, **kw)
        started.append(a)
        return a

    yield start
    for a in started:
        a.stop()


def test_a_new_generation_runs_the_callbacks_in_order_before_the_hook_answers(agent):
    a = agent()
    assert a.read("generations") == [], "nothing at start (the build VM)"
    status, body = a.hook("/run")
    assert status == 200, body
    # Already there when /run answered: the hook waited for the acknowledgement.
    assert a.read("order") == ["first", "second"]
    gen = a.status()["generation"]
    assert a.read("generations") == ["%d %s True" % (gen["generation"], gen["id"])]
    # The agent's deadline came with the line: inside run_timeout (2 s), not yet past.
    budgets = [int(b) for b in a.read("budgets")]
    assert len(budgets) == 1 and 0 < budgets[0] <= 2000, budgets
    first, after = a.read("draws")[0].split()
    assert first != after, "the kept Random left the snapshot's sequence"
    member = [p for p in a.status()["inproc"]["processes"] if p["kind"] == "app"][0]
    assert member["reseeded"] == "callbacks=2" and member["generation"] == gen["generation"]
    assert a.hook("/suspend")[0] == 200
    assert a.read("events") == ["suspend %d" % gen["generation"]]
    assert a.hook("/resume")[0] == 200
    assert len(a.read("generations")) == 2
    assert a.hook("/terminate")[0] == 200
    a.wait_for(lambda: "terminate" in " ".join(a.read("events")), "the terminate callback")
    assert a.proc.wait(10) is not None


def test_a_callback_that_raises_fails_run_and_only_reports_elsewhere(agent):
    a = agent(mode="raise")
    status, body = a.hook("/run")
    assert status == 500, body
    assert "RuntimeError: the app's callback broke" in json.dumps(body), body
    # /resume is not in [hooks] fail_on: 200, degraded, and the reason in /status.
    a2 = a.hook("/resume")
    assert a2[0] == 200, a2


def test_a_callback_that_hangs_fails_run_inside_its_budget(agent):
    a = agent(mode="hang")
    t = time.time()
    status, body = a.hook("/run")
    elapsed = time.time() - t
    assert status == 500 and "did not acknowledge" in json.dumps(body), body
    assert elapsed < 2.0, "answered inside run_timeout (2 s): %.2f s" % elapsed


def test_with_the_helpers_off_the_library_still_gets_its_generations(agent):
    a = agent(config="[app]\nreseed_in_process = false\n")
    assert a.hook("/run")[0] == 200
    assert len(a.read("generations")) == 1


def test_a_launcher_that_forks_its_worker_and_exits_never_fails_run(agent):
    # The forked worker closes the launcher's connection (without writing to it) and registers
    # as itself: when the launcher exits, its registration ends with it.
    a = agent(mode="launcher")
    worker = int(a.wait_for(lambda: a.read("worker"), "the worker")[0])
    def registered():
        st = a.status()
        return {p["pid"] for p in st["inproc"]["processes"] if p["kind"] == "app"} == {
            st["app"]["pid"],
            worker,
        }

    a.wait_for(registered, "the app and the worker registered, the launcher gone")
    status, body = a.hook("/run")
    assert status == 200, body
    os.kill(worker, 9)


def test_the_package_is_typed_and_passes_mypy_strict():
    """The package ships its types (PEP 561) and they hold: mypy --strict on the source."""
    import importlib.util
    import pathlib
    import subprocess
    import sys

    src = pathlib.Path(__file__).resolve().parent.parent / "src" / "microvm_agent"
    assert (src / "py.typed").is_file()
    if importlib.util.find_spec("mypy") is None:
        import pytest

        pytest.skip("mypy is not installed (CI installs it)")
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", str(src)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
