"""Runs a command under a seccomp filter that kills the process on socket(2).

The shape of a common job sandbox, for the helpers' tests (Python's, Node's, and the agent's
chaos tier): ``python3 -S kill_socket.py <program> <args...>``. Run it with ``-S`` so that it
does not load the helper itself. Standard library only (ctypes, prctl).
"""

import ctypes
import os
import platform
import struct
import sys

SOCKET = {"x86_64": 41, "aarch64": 198}[platform.machine()]


def stmt(code, k):
    return struct.pack("HBBI", code, 0, 0, k)


def jump(code, k, jt, jf):
    return struct.pack("HBBI", code, jt, jf, k)


PROGRAM = b"".join(
    [
        stmt(0x20, 0),  # ld [nr]
        jump(0x15, SOCKET, 0, 1),  # jeq socket, kill, allow
        stmt(0x06, 0x80000000),  # ret SECCOMP_RET_KILL_PROCESS
        stmt(0x06, 0x7FFF0000),  # ret SECCOMP_RET_ALLOW
    ]
)

buf = ctypes.create_string_buffer(PROGRAM)
fprog = struct.pack("HxxxxxxQ", len(PROGRAM) // 8, ctypes.addressof(buf))
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
    sys.exit("prctl(PR_SET_NO_NEW_PRIVS): errno %d" % ctypes.get_errno())
if libc.prctl(22, 2, ctypes.c_char_p(fprog), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
    sys.exit("prctl(PR_SET_SECCOMP): errno %d" % ctypes.get_errno())
os.execv(sys.argv[1], sys.argv[1:])
