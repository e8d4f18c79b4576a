"""microvm-agent's in-process reseed for Python (started by this directory's sitecustomize).

A clone of a snapshot is a copy of this process: the module-level ``random`` (one Mersenne
Twister seeded at import), NumPy's legacy global generator and OpenSSL's generators in ``_ssl``
are the same in every clone. This module registers the process with the agent over
``$MICROVM_AGENT_INPROC`` (``inproc/PROTOCOL.md``) and, for every new generation, reseeds what
the process has loaded from the bytes the agent sends for this process (plus the pid, the
generation, clock readings, and for OpenSSL ``os.urandom``), then acknowledges, so the hook that made the generation answers
only after this process can no longer draw the snapshot's values.

Standard library only, and as little of it as possible (``_socket``, ``_thread``, the built-in
``time``): it runs in every Python process the app starts. A ``fork`` without ``exec`` registers the child anew.
"""

import os
import sys
import time  # built in; imported here, not in reseed(), where an import could let threads run

PROTOCOL = b"MVA1"
MAX_LINE = 256


# This process's connection: (socket, identity). A forked child closes the parent's (if the
# number is still that socket) and registers as itself.
_conn = None


def start():
    path = os.environ.get("MICROVM_AGENT_INPROC")
    # Under a seccomp filter our socket() (or the thread's clone) might be what kills the
    # process: a filtered process does not take part.
    if not path or filtered():
        return
    _spawn(path)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=lambda: _after_fork(path))


def _spawn(path):
    import _thread

    _thread.start_new_thread(_serve, (path,))


def _after_fork(path):
    global _conn
    conn, _conn = _conn, None
    if conn is not None:
        _let_go(*conn)
    if not filtered():
        _spawn(path)


def filtered():
    """True unless this thread's status says ``Seccomp: 0`` (or the kernel has no seccomp)."""
    for name in ("/proc/thread-self/status", "/proc/self/status"):
        try:
            with open(name, "rb") as f:
                status = f.read()
        except OSError:
            continue
        return seccomp_mode(status) not in (None, b"0")
    return True  # no /proc: cannot tell, so stay out


def seccomp_mode(status):
    for line in status.split(b"\n"):
        if line.startswith(b"Seccomp:"):
            return line[len(b"Seccomp:") :].strip()[:1]
    return None


def identity(fd):
    """What descriptor ``fd`` is now (device, inode), or None."""
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class _Taken(Exception):
    """Our descriptor's number now belongs to something else the app opened."""


def _check(s, ident):
    if identity(s.fileno()) != ident:
        raise _Taken()


def _let_go(s, ident):
    """Closes our socket, but never a descriptor the app reused: that one is only forgotten."""
    fd = s.detach()
    if fd >= 0 and identity(fd) == ident:
        os.close(fd)


def reseed(seed, number):
    """Reseeds every generator of this process that the agent's seed can reach; says which.

    ``random`` and NumPy first, with nothing before them that lets another thread run: every
    system call (``os.urandom`` among them) releases the GIL, and a main thread waiting for it
    after a busy spell would then serve its next request from the snapshot's generator before
    this thread reseeded it (measured: the chaos tier's busy Python app, under load). Their
    material is the agent's bytes for this process (keyed per clone), the pid, the generation
    and two clock readings (no system call); OpenSSL's also gets the kernel's bytes."""
    clocks = time.monotonic_ns().to_bytes(8, "little") + time.time_ns().to_bytes(8, "little")
    material = mix_material(seed, os.getpid(), number, clocks)
    done = []
    rnd = sys.modules.get("random")
    if rnd is not None and hasattr(rnd, "seed"):
        rnd.seed(material)
        done.append("random")
    nprandom = sys.modules.get("numpy.random")
    if nprandom is not None and hasattr(nprandom, "seed"):
        try:
            # The legacy seeding takes any number of 32-bit words and mixes them all.
            nprandom.seed([int.from_bytes(material[i : i + 4], "little") for i in range(0, 60, 4)])
            done.append("numpy")
        except Exception:
            pass
    ssl = sys.modules.get("_ssl")
    if ssl is not None and hasattr(ssl, "RAND_add"):
        # The preloaded library does this too; here as well for a process it could not reach.
        ssl.RAND_add(material + os.urandom(32), 0.0)
        done.append("ssl")
    if "cryptography.hazmat.bindings._rust" in sys.modules:
        # pyca/cryptography's wheels carry their own OpenSSL with its symbols hidden (measured:
        # 48.0.0 exports no RAND_*): nothing outside can reseed it. Said, for /status.
        done.append("unreached:cryptography")
    return ",".join(done) or "-"


def mix_material(seed, pid, number, fresh):
    """The protocol's one mixing rule (``inproc/PROTOCOL.md``, "Mixing"): the agent's bytes for
    this process, the pid (u32) and the generation (u64), little-endian, then fresh bytes.
    ``random.seed`` and OpenSSL's ``RAND_add`` hash what they are given: the material itself is
    what they get."""
    return bytes(seed) + (pid & 0xFFFFFFFF).to_bytes(4, "little") + number.to_bytes(8, "little") + fresh


_MAX_NUMBER = 2**53 - 1
_HEX = frozenset(b"0123456789abcdef")


def _decimal(word, most):
    """``0`` or 1 to ``most`` ASCII digits without a leading zero, else None."""
    if not 0 < len(word) <= most or not all(48 <= b <= 57 for b in word):
        return None
    if word[0] == 48 and len(word) > 1:
        return None
    return int(word)


def parse(line):
    """``MVA1 generation <n> <64 hex> [<ms>]`` -> (n, seed bytes), else None (the grammar of
    ``inproc/PROTOCOL.md``, checked against ``testdata/lines.tsv``). The helper never asks for a
    deadline; a line with one is still a generation."""
    parts = line.split(b" ")
    if len(parts) not in (4, 5) or parts[0] != PROTOCOL or parts[1] != b"generation":
        return None
    number = _decimal(parts[2], 16)
    if number is None or number > _MAX_NUMBER:
        return None
    if len(parts) == 5 and _decimal(parts[4], 9) is None:
        return None
    if len(parts[3]) != 64 or not _HEX.issuperset(parts[3]):
        return None
    return number, bytes.fromhex(parts[3].decode("ascii"))


def _serve(path):
    global _conn
    import _socket

    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    ident = identity(s.fileno())
    mine = (s, ident)
    _conn = mine
    try:
        s.connect(path)
        _check(s, ident)
        s.sendall(b"MVA1 hello python %d\n" % os.getpid())
        buf = b""
        while True:
            _check(s, ident)
            chunk = s.recv(MAX_LINE)
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                order = parse(line)
                if order is not None:
                    number, seed = order
                    what = reseed(seed, number)
                    _check(s, ident)
                    s.sendall(b"MVA1 ack %d %s\n" % (number, what.encode("ascii")))
            if len(buf) > MAX_LINE:
                return
    except (OSError, _Taken):
        return
    finally:
        if _conn is mine:
            _conn = None
        _let_go(s, ident)
