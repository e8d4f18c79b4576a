"""Clone-safety callbacks for an app behind microvm-agent (AWS Lambda MicroVMs).

Every VM of an image is a clone of one snapshot: whatever the app holds in memory (a
``random.Random`` it keeps, a NumPy ``Generator``, ids and keys it made) is the same in every
clone. The agent reseeds what it can reach from outside; this library runs *your* code at the
right moment, before the agent answers the platform's hook:

    import microvm_agent

    @microvm_agent.on_new_generation
    def fresh(gen):
        microvm_agent.reseed(my_rng)

The shape is SnapStart's ``register_after_restore`` and CRaC's ``afterRestore``. Callbacks run in
registration order on the library's own thread; one that raises is reported to the agent, which
fails the hook where ``[hooks] fail_on`` says. Outside a MicroVM nothing happens (said once).

The channel is the agent's Unix socket (``$MICROVM_AGENT_INPROC``; ``inproc/PROTOCOL.md`` in the
agent's repository): one connection per process, kind ``app``. Standard library only.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

__all__ = [
    "Generation",
    "on_new_generation",
    "on_suspend",
    "on_terminate",
    "current",
    "generation_id",
    "seed",
    "secret",
    "kernel_crng",
    "reseed",
    "seed_material",
    "is_active",
]

_log = logging.getLogger("microvm_agent")
_PROTOCOL = b"MVA1"
_MAX_LINE = 256
_EVENTS = ("generation", "suspend", "terminate")

#: A callback: called with the generation; what it returns is ignored, what it raises is reported.
Callback = Callable[["Generation"], Any]
_F = TypeVar("_F", bound=Callable[["Generation"], Any])
_Identity = Tuple[int, int]

_lock = threading.Lock()
_callbacks: Dict[str, List[Callback]] = {e: [] for e in _EVENTS}
_state: Dict[str, Any] = {
    "started": False,
    "connected": False,
    "said_outside": False,
    "process_seed": None,
    "process_number": 0,
    "conn": None,
}


class Generation:
    """One generation as the agent published it (``<state_dir>/generation``).

    ``process_seed`` is the 32 bytes the agent sent this process for this generation (``None``
    for suspend and terminate); ``seed`` the app's seed (``<state_dir>/seed``); ``deadline`` the
    ``time.monotonic()`` by which the agent stops waiting for the callbacks (``None`` when it did
    not say, as from ``current()``).
    """

    __slots__ = (
        "number",
        "id",
        "reason",
        "microvm_id",
        "kernel_crng",
        "seed",
        "process_seed",
        "deadline",
    )
    number: int
    id: Optional[str]
    reason: Optional[str]
    microvm_id: Optional[str]
    kernel_crng: Optional[str]
    seed: Optional[bytes]
    process_seed: Optional[bytes]
    deadline: Optional[float]

    def __init__(self, fields: Dict[str, Any], process_seed: Optional[bytes] = None) -> None:
        self.number = int(fields.get("generation", 0))
        self.id = fields.get("id")
        self.reason = fields.get("reason")
        self.microvm_id = fields.get("microvm_id")
        self.kernel_crng = fields.get("kernel_crng")
        self.seed = seed()
        self.process_seed = process_seed
        self.deadline = None

    def __repr__(self) -> str:
        # Never the seeds.
        return "Generation(number=%r, id=%r, reason=%r)" % (self.number, self.id, self.reason)


def on_new_generation(callback: _F) -> _F:
    """Runs ``callback(generation)`` on every new generation (each clone's ``/run``, every
    ``/resume``, a ``/validate``, a restore the agent detected), before the hook answers."""
    return _register("generation", callback)


def on_suspend(callback: _F) -> _F:
    """Runs ``callback(generation)`` on ``/suspend``, before the VM is frozen."""
    return _register("suspend", callback)


def on_terminate(callback: _F) -> _F:
    """Runs ``callback(generation)`` on ``/terminate``, before the agent stops the app."""
    return _register("terminate", callback)


def is_active() -> bool:
    """Whether this process is connected to an agent."""
    return bool(_state["connected"])


def _state_dir() -> Optional[str]:
    return os.environ.get("MICROVM_AGENT_STATE_DIR")


def _read(name: str) -> Optional[bytes]:
    d = _state_dir()
    if not d:
        return None
    try:
        with open(os.path.join(d, name), "rb") as f:
            return f.read()
    except OSError:
        return None


def current() -> Optional[Generation]:
    """The current generation, or ``None`` (before the first one, or outside a MicroVM)."""
    raw = _read("generation")
    return _parse_generation(raw) if raw else None


#: The generation file's format this library reads (``inproc/PROTOCOL.md``, "The state directory").
_FORMAT = 1


def _parse_generation(raw: bytes) -> Optional[Generation]:
    """A generation file -> its ``Generation``, or ``None`` when it is not one this library can
    read: not a JSON object, another ``format`` (absent: 1, as agents before the field wrote), no
    generation number. Unknown fields are a later agent's and are ignored."""
    try:
        fields = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(fields, dict) or fields.get("format", _FORMAT) != _FORMAT:
        return None
    number = fields.get("generation")
    if not isinstance(number, int) or isinstance(number, bool) or number < 0:
        return None
    return Generation(fields)


def generation_id() -> Optional[str]:
    g = current()
    return g.id if g else None


def seed() -> Optional[bytes]:
    """The app's seed for this generation (32 bytes), or ``None``."""
    return _read("seed")


def secret(name: str) -> Optional[bytes]:
    """The value of the agent's ``[[secret]]`` ``name`` for this generation (bytes), or ``None``."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError("not a secret's name: %r" % (name,))
    return _read(os.path.join("secrets", name))


def kernel_crng() -> Optional[str]:
    """``reseeded``, ``platform`` or ``not-reseeded`` (the agent's ``docs/clone-safety.md``), or
    ``None``."""
    g = current()
    return g.kernel_crng if g else None


def _mix(seed: bytes, pid: int, number: int, fresh: bytes) -> bytes:
    """The protocol's one mixing rule (``inproc/PROTOCOL.md``, "Mixing"): SHA-256 of the seed (32
    bytes), the pid (u32) and the generation (u64), little-endian, then the fresh bytes."""
    import hashlib

    material = bytes(seed) + (pid & 0xFFFFFFFF).to_bytes(4, "little") + number.to_bytes(8, "little") + fresh
    return hashlib.sha256(material).digest()


def _material(extra: bytes = b"") -> bytes:
    """The mix of the agent's seed for this process (or the app's seed, or zeros outside a
    MicroVM), this pid, the seed's generation and ``os.urandom(32)`` followed by ``extra``."""
    agent = _state["process_seed"]
    number = _state["process_number"]
    if agent is None:
        agent = seed() or bytes(32)
        g = current()
        number = g.number if g else 0
    return _mix(agent[:32].ljust(32, b"\0"), os.getpid(), number, os.urandom(32) + bytes(extra))


def seed_material() -> bytes:
    """32 bytes that differ in every clone even where the kernel's ``getrandom`` does not: the
    protocol's mix of the agent's seed for this process (or the app's seed) and
    ``os.urandom(32)``. For what ``reseed`` does not know (``ssl.RAND_add(seed_material(), 32.0)``,
    a key you derive)."""
    return _material()


def reseed(*generators: Any, extra: bytes = b"") -> int:
    """Reseeds each generator from ``seed_material()`` (with ``extra`` among its fresh bytes):
    different in every clone even where the kernel's ``getrandom`` is not. Takes
    ``random.Random`` instances (the ``random`` module itself when called without arguments),
    NumPy ``Generator`` and ``RandomState`` objects. Returns how many it reseeded."""
    import random as _random

    targets = generators or (_random,)
    for g in targets:
        material = _material(extra)
        if g is _random:
            _random.seed(material)
        elif isinstance(g, _random.Random):
            g.seed(material)
        elif hasattr(g, "bit_generator"):
            bits = g.bit_generator
            bits.state = type(bits)(int.from_bytes(material, "little")).state
        elif hasattr(g, "seed") and type(g).__name__ == "RandomState":
            g.seed([int.from_bytes(material[i : i + 4], "little") for i in range(0, 32, 4)])
        else:
            raise TypeError("cannot reseed a %s" % type(g).__name__)
    return len(targets)


def _register(event: str, callback: _F) -> _F:
    if not callable(callback):
        raise TypeError("a callback must be callable")
    with _lock:
        _callbacks[event].append(callback)
        if not _state["started"]:
            _state["started"] = True
            _start()
    return callback


def _start() -> None:
    path = os.environ.get("MICROVM_AGENT_INPROC")
    if not path:
        if not _state["said_outside"]:
            _state["said_outside"] = True
            _log.info("not behind microvm-agent (no MICROVM_AGENT_INPROC): callbacks will not run")
        return
    _spawn(path)
    if hasattr(os, "register_at_fork"):
        # A worker forked without exec is a process of its own: it closes the parent's
        # connection (never writing to it) and registers anew.
        os.register_at_fork(after_in_child=lambda: _after_fork(path))


def _spawn(path: str) -> None:
    t = threading.Thread(target=_serve, args=(path,), name="microvm-agent", daemon=True)
    t.start()


def _after_fork(path: str) -> None:
    conn, _state["conn"] = _state["conn"], None
    _state["connected"] = False
    if conn is not None:
        _let_go(*conn)
    _spawn(path)


def _identity(fd: int) -> Optional[_Identity]:
    """What descriptor ``fd`` is now (device, inode), or None."""
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class _Taken(Exception):
    """The connection's descriptor number now belongs to something else the app opened."""


def _check(s: socket.socket, ident: Optional[_Identity]) -> None:
    if _identity(s.fileno()) != ident:
        raise _Taken()


def _let_go(s: socket.socket, ident: Optional[_Identity]) -> None:
    """Closes the connection, but never a descriptor the app reused: that one is only forgotten."""
    fd = s.detach()
    if fd >= 0 and _identity(fd) == ident:
        os.close(fd)


def _serve(path: str) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ident = _identity(s.fileno())
    mine = (s, ident)
    _state["conn"] = mine
    try:
        s.connect(path)
    except OSError as e:
        _log.warning("cannot reach microvm-agent at %s: %s", path, e)
        if _state["conn"] is mine:
            _state["conn"] = None
        _let_go(s, ident)
        return
    _state["connected"] = True
    try:
        _check(s, ident)
        # The events it wants beside generations, then the features it knows: "deadline" (each
        # line carries the milliseconds left; an agent that predates it ignores the word).
        s.sendall(b"MVA1 hello app %d suspend,terminate deadline\n" % os.getpid())
        buf = b""
        while True:
            _check(s, ident)
            chunk = s.recv(_MAX_LINE)
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                answer = _handle(line)
                if answer is not None:
                    _check(s, ident)
                    s.sendall(answer)
            if len(buf) > _MAX_LINE:
                return
    except _Taken:
        _log.warning("microvm-agent: the app reused this library's descriptor; it stops taking part")
    except OSError:
        return
    finally:
        if _state["conn"] is mine:
            _state["conn"] = None
            _state["connected"] = False
        _let_go(s, ident)


_MAX_NUMBER = 2**53 - 1
_HEX = frozenset(b"0123456789abcdef")


def _decimal(word: bytes, most: int) -> Optional[int]:
    """``0`` or 1 to ``most`` ASCII digits without a leading zero, else None."""
    if not 0 < len(word) <= most or not all(48 <= b <= 57 for b in word):
        return None
    if word[0] == 48 and len(word) > 1:
        return None
    return int(word)


def parse(line: bytes) -> Optional[Tuple[str, int, Optional[bytes], Optional[int]]]:
    """A line from the agent -> ``("generation", n, seed, ms)`` or ``(event, n, None, ms)``, else
    None; ``ms``: the milliseconds left until the agent stops waiting (``None`` when the line has
    no such last word). The grammar of ``inproc/PROTOCOL.md``, checked against
    ``testdata/lines.tsv``."""
    parts = line.split(b" ")
    budget: Optional[int] = None
    if len(parts) == 5:
        budget = _decimal(parts[4], 9)
        if budget is None:
            return None
        parts = parts[:4]
    if len(parts) != 4 or parts[0] != _PROTOCOL:
        return None
    if parts[1] == b"generation":
        number = _decimal(parts[2], 16)
        if number is None or number > _MAX_NUMBER or len(parts[3]) != 64 or not _HEX.issuperset(parts[3]):
            return None
        return "generation", number, bytes.fromhex(parts[3].decode("ascii")), budget
    if parts[1] == b"event":
        number = _decimal(parts[3], 16)
        name = parts[2].decode("ascii", "replace")
        if number is not None and number <= _MAX_NUMBER and name in _EVENTS[1:]:
            return name, number, None, budget
    return None


def _handle(line: bytes) -> Optional[bytes]:
    msg = parse(line)
    if msg is None:
        return None
    event, number, process_seed, budget = msg
    if process_seed is not None:
        _state["process_seed"] = process_seed
        _state["process_number"] = number
    gen = current() or Generation({"generation": number})
    gen.process_seed = process_seed
    if budget is not None:
        gen.deadline = time.monotonic() + budget / 1000
    with _lock:
        callbacks = list(_callbacks[event])
    for cb in callbacks:
        try:
            cb(gen)
        except BaseException as e:  # noqa: B902 - any failure is the app's, reported as such
            _log.exception("microvm-agent %s callback %r failed", event, cb)
            reason = ("%s: %s" % (type(e).__name__, e)).replace("\n", " ")
            return _line(b"MVA1 fail %d " % number, reason)
    return b"MVA1 ack %d callbacks=%d\n" % (number, len(callbacks))


def _line(head: bytes, text: str) -> bytes:
    """``head`` + as much of ``text`` as fits in one protocol line."""
    room = _MAX_LINE - len(head) - 1
    # Cut at a character boundary: the agent reads UTF-8 lines only.
    body = text.replace("\n", " ").encode("utf-8", "replace")[:room].decode("utf-8", "ignore")
    return head + body.encode("utf-8") + b"\n"
