#!/usr/bin/env python3
"""Writes the conformance vectors of the app-side contract (inproc/PROTOCOL.md) into this folder.

The cases are written here, readable; the files hold them in a form every runner reads without a
library (tab-separated, hex for bytes). `python3 testdata/make.py --check` fails when a committed
file differs from what this script writes (.ci/run runs it), so the two never drift apart.
"""

import hashlib
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

SEED_A = bytes(range(32)).hex()
SEED_B = "f0" * 16 + "0f" * 16
MAX_N = 2**53 - 1

# Lines the agent sends a process. Expected: what a reader makes of it.
#   generation <n> <seed hex> <ms or ->   |   event <name> <n> <ms or ->   |   ignore
LINES = [
    ("a generation", f"MVA1 generation 1 {SEED_A}", f"generation 1 {SEED_A} -"),
    ("with a deadline", f"MVA1 generation 42 {SEED_B} 1500", f"generation 42 {SEED_B} 1500"),
    ("the deadline passed", f"MVA1 generation 7 {SEED_A} 0", f"generation 7 {SEED_A} 0"),
    ("the largest number (2^53 - 1)", f"MVA1 generation {MAX_N} {SEED_A}", f"generation {MAX_N} {SEED_A} -"),
    ("the largest deadline (9 digits)", f"MVA1 generation 3 {SEED_A} 999999999", f"generation 3 {SEED_A} 999999999"),
    ("suspend", "MVA1 event suspend 3", "event suspend 3 -"),
    ("terminate with a deadline", "MVA1 event terminate 7 250", "event terminate 7 250"),
    ("a number past 2^53 - 1", f"MVA1 generation {MAX_N + 1} {SEED_A}", "ignore"),
    ("a leading zero", f"MVA1 generation 042 {SEED_A}", "ignore"),
    ("a signed number", f"MVA1 generation +1 {SEED_A}", "ignore"),
    ("a negative number", f"MVA1 generation -1 {SEED_A}", "ignore"),
    ("digits that are not ASCII", f"MVA1 generation \u0661 {SEED_A}", "ignore"),
    ("upper-case hex", f"MVA1 generation 1 {SEED_A.upper()}", "ignore"),
    ("63 hex digits", f"MVA1 generation 1 {SEED_A[:63]}", "ignore"),
    ("66 hex digits", f"MVA1 generation 1 {SEED_A}00", "ignore"),
    ("not hex", f"MVA1 generation 1 {'g' * 64}", "ignore"),
    ("a deadline of 10 digits", f"MVA1 generation 1 {SEED_A} 1000000000", "ignore"),
    ("a deadline with a leading zero", f"MVA1 generation 1 {SEED_A} 01", "ignore"),
    ("a deadline that is not a number", f"MVA1 generation 1 {SEED_A} soon", "ignore"),
    ("a word too many", f"MVA1 generation 1 {SEED_A} 12 34", "ignore"),
    ("a trailing space", f"MVA1 generation 1 {SEED_A} ", "ignore"),
    ("two spaces", f"MVA1  generation 1 {SEED_A}", "ignore"),
    ("a carriage return", f"MVA1 generation 1 {SEED_A}\r", "ignore"),
    ("a tab", f"MVA1\tgeneration 1 {SEED_A}", "ignore"),
    ("another version", f"MVA2 generation 1 {SEED_A}", "ignore"),
    ("an event nobody knows yet (a later version may add one)", "MVA1 event resume 3", "ignore"),
    ("an event without a number", "MVA1 event suspend", "ignore"),
    ("an event with a dash for a deadline", "MVA1 event suspend 3 -", "ignore"),
    ("a process's line, not the agent's", "MVA1 hello node 12", "ignore"),
    ("nothing", "", "ignore"),
]

# The one mixing rule: material = seed (32 bytes) || pid (u32, little-endian) || n (u64,
# little-endian) || fresh (any length); mix = SHA-256(material).
MIXES = [
    (SEED_A, 1, 1, ""),
    (SEED_A, 4242, 7, "ab" * 32),
    (SEED_B, 4194304, MAX_N, "00" * 16),
    ("00" * 32, 2**32 - 1, 2**64 - 1, bytes(range(255, 191, -1)).hex()),
]

AGENT_GENERATION = {
    "format": 1,
    "generation": 3,
    "id": "5f0c6c1e2b7d4a39a1e0c4d2b9f8e7a6",
    "reason": "run",
    "microvm_id": "vm-0a1b2c",
    "kernel_reseed": "ioctl",
    "kernel_crng": "reseeded",
    "hardware_random": "rndr",
    "at": "2026-12-06T19:31:26.123Z",
    "clock": {"source": "rtc", "offset_ms": -12, "action": "within-1s"},
}

# Generation files (<state_dir>/generation). Expected: the fields a library hands the app,
# or `reject` (no generation: an error or "none", as the library says it).
GENERATIONS = [
    ("agent.json", "what the agent writes", json.dumps(AGENT_GENERATION, separators=(",", ":")) + "\n",
     "3\t5f0c6c1e2b7d4a39a1e0c4d2b9f8e7a6\trun\tvm-0a1b2c\treseeded"),
    ("later.json", "a later agent: fields in another order, spaced out, new fields, one of them an "
     "object with keys of the same names", json.dumps({
         "later": {"generation": 99, "id": "not-this", "list": [1, "two", {"reason": "x"}, None, True]},
         "kernel_crng": "platform", "reason": "resume", "id": "00112233445566778899aabbccddeeff",
         "generation": 12, "format": 1, "microvm_id": "vm-9", "weight": -1.5e3,
     }, indent=2) + "\n",
     "12\t00112233445566778899aabbccddeeff\tresume\tvm-9\tplatform"),
    ("escapes.json", "escapes in a string", '{"format":1,"generation":4,"id":"0123456789abcdef0123456789abcdef",'
     '"reason":"validate","microvm_id":"vm-\\u0031\\"\\\\\\/x","kernel_crng":"not-reseeded"}\n',
     '4\t0123456789abcdef0123456789abcdef\tvalidate\tvm-1"\\/x\tnot-reseeded'),
    ("no-vm-id.json", "no VM id", '{"format":1,"generation":1,"id":"ffffffffffffffffffffffffffffffff",'
     '"reason":"restore","microvm_id":null,"kernel_crng":"not-reseeded"}\n',
     "1\tffffffffffffffffffffffffffffffff\trestore\tnull\tnot-reseeded"),
    ("before-format.json", "an agent from before the format field (read as format 1)",
     '{"generation":2,"id":"abababababababababababababababab","reason":"run","microvm_id":"vm-2",'
     '"kernel_crng":"reseeded"}\n',
     "2\tabababababababababababababababab\trun\tvm-2\treseeded"),
    ("format-2.json", "a format this version does not know", '{"format":2,"generation":5,'
     '"id":"abababababababababababababababab","reason":"run","microvm_id":"vm-2","kernel_crng":"reseeded"}\n',
     "reject"),
    ("cut.json", "a file cut short (never written so: files are replaced whole)",
     '{"format":1,"generation":5,"id":"abab', "reject"),
    ("not-an-object.json", "not an object", "[1,2,3]\n", "reject"),
    ("no-number.json", "no generation number", '{"format":1,"id":"abababababababababababababababab"}\n', "reject"),
]


def files():
    out = {}
    lines = [
        "# Lines the agent sends a process (inproc/PROTOCOL.md, \"The conversation\"); written by make.py.",
        "# <line: hex of its bytes, without the newline> TAB <what a reader makes of it>:",
        "#   generation <n> <seed> <ms|->, event <name> <n> <ms|->, or ignore",
    ]
    for what, line, expect in LINES:
        lines.append(f"# {what}")
        lines.append(f"{line.encode('utf-8').hex()}\t{expect}")
    out["lines.tsv"] = "\n".join(lines) + "\n"

    mixes = [
        "# The mixing rule (inproc/PROTOCOL.md, \"Mixing\"); written by make.py.",
        "# <seed hex> TAB <pid> TAB <n> TAB <fresh hex, may be empty> TAB <material hex> TAB <mix hex>",
    ]
    for seed, pid, n, fresh in MIXES:
        material = bytes.fromhex(seed) + pid.to_bytes(4, "little") + n.to_bytes(8, "little") + bytes.fromhex(fresh)
        mixes.append(f"{seed}\t{pid}\t{n}\t{fresh}\t{material.hex()}\t{hashlib.sha256(material).hexdigest()}")
    out["mix.tsv"] = "\n".join(mixes) + "\n"

    gens = [
        "# Generation files (inproc/PROTOCOL.md, \"The state directory\"); written by make.py.",
        "# <file in generation/> TAB <generation> TAB <id> TAB <reason> TAB <microvm_id|null> TAB <kernel_crng>",
        "# or <file> TAB reject",
    ]
    for name, what, content, expect in GENERATIONS:
        out[f"generation/{name}"] = content
        gens.append(f"# {what}")
        gens.append(f"{name}\t{expect}")
    out["generation.tsv"] = "\n".join(gens) + "\n"
    return out


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    for name, content in files().items():
        path = os.path.join(HERE, name)
        if check:
            try:
                with open(path, encoding="utf-8") as f:
                    if f.read() == content:
                        continue
            except FileNotFoundError:
                pass
            stale.append(name)
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(content)
    if stale:
        sys.exit(f"testdata: out of date (run python3 testdata/make.py): {', '.join(stale)}")


if __name__ == "__main__":
    main()
