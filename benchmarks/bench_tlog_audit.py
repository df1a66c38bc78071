"""Audit throughput and peak memory: ``veriml log audit`` over a static 10^6-entry tile tree.

The tree (128-byte entries, as ``tile/...`` files with a signed checkpoint) is written to a temp
folder; the audit then runs in a fresh subprocess so that its peak resident memory
(``ru_maxrss``, interpreter included) is its own. The goal (docs/tlog-operations.md,
"Performance") is ≥ 100,000 entries/s with ≤ 200 MiB: ``audit_ratio`` = entries/s ÷ 100,000
(goal ≥ 1.0), ``audit_peak_mib``. Quick mode uses 10^5 entries.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from veriml.core.keys import generate_key
from veriml.tlog.checkpoint import Checkpoint, sign_checkpoint
from veriml.tlog.merkle import leaf_hash, node_hash, root_from_leaf_hashes
from veriml.tlog.note import NoteSigner
from veriml.tlog.tiles import TILE_WIDTH, TilePath, encode_entry_bundle

ENTRY_SIZE = 128
GOAL_RATE = 100_000
GOAL_PEAK_MIB = 200

_CHILD = """
import json, resource, sys, time
from veriml.tlog.audit import audit
from veriml.tlog.note import NoteVerifier
t0 = time.perf_counter()
report = audit(sys.argv[1], NoteVerifier.from_vkey(sys.argv[2]))
seconds = time.perf_counter() - t0
# VmHWM is this process image's own peak: Linux carries ru_maxrss across fork and exec, so a
# child of a large benchmark process would report its parent's peak.
try:
    status = open("/proc/self/status").read()
    peak_kib = int(status.split("VmHWM:")[1].split()[0])
except (OSError, IndexError, ValueError):
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"entries": report.entries, "tiles": report.tiles, "seconds": seconds,
                  "peak_mib": peak_kib / 1024}))
"""


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_tree(folder: Path, size: int, signer: NoteSigner) -> None:
    """A static tile tree of ``size`` entries, written bundle by bundle (never all in memory)."""
    upper: list[bytes] = []  # level-8 node hashes: one per full level-0 tile
    all_level0_partial: list[bytes] = []
    for n in range(0, size, TILE_WIDTH):
        width = min(TILE_WIDTH, size - n)
        entries = [
            (b"%012d " % i).ljust(ENTRY_SIZE, b"x") for i in range(n, n + width)
        ]  # 128 bytes, all distinct
        hashes = [leaf_hash(e) for e in entries]
        index = n // TILE_WIDTH
        _write(folder / TilePath("entries", index, width).to_path(), encode_entry_bundle(entries))
        _write(folder / TilePath(0, index, width).to_path(), b"".join(hashes))
        if width == TILE_WIDTH:
            upper.append(root_from_leaf_hashes(hashes))
        else:
            all_level0_partial = hashes
    # Higher levels from the level-8 hashes (small: size / 256 of them).
    level, hashes = 1, upper
    while hashes:
        next_level: list[bytes] = []
        for n in range(0, len(hashes), TILE_WIDTH):
            chunk = hashes[n : n + TILE_WIDTH]
            _write(folder / TilePath(level, n // TILE_WIDTH, len(chunk)).to_path(), b"".join(chunk))
            if len(chunk) == TILE_WIDTH:
                next_level.append(root_from_leaf_hashes(chunk))
        level, hashes = level + 1, next_level
    root = _root(upper, all_level0_partial)
    note = sign_checkpoint(Checkpoint("bench.example/log", size, root), [signer])
    _write(folder / "checkpoint", note)


def _root(full_tile_roots: list[bytes], partial: list[bytes]) -> bytes:
    """The tree root from the level-8 hashes of the full tiles and the partial tail's leaves:
    merge equal-height subtrees left to right (a compact range), then fold right to left."""
    stack: list[tuple[int, bytes]] = []  # (height, hash), heights strictly decreasing
    for height, h in [(8, r) for r in full_tile_roots] + [(0, p) for p in partial]:
        stack.append((height, h))
        while len(stack) >= 2 and stack[-1][0] == stack[-2][0]:
            (top, right), (_, left) = stack.pop(), stack.pop()
            stack.append((top + 1, node_hash(left, right)))
    root = stack[-1][1]
    for _, left in reversed(stack[:-1]):
        root = node_hash(left, root)
    return root


def run(quick: bool) -> dict[str, Any]:
    size = 100_000 if quick else 1_000_000
    signer = NoteSigner("bench.example/log", generate_key())
    with tempfile.TemporaryDirectory(prefix="veriml-bench-audit-") as tmp:
        folder = Path(tmp) / "log"
        write_tree(folder, size, signer)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src")])
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, folder.as_uri(), signer.vkey],
            capture_output=True,
            text=True,
            check=True,
            env=env,
            timeout=1800,
        )
    result = json.loads(done.stdout)
    rate = result["entries"] / result["seconds"]
    return {
        "description": (
            f"veriml log audit of a static {size:,}-entry tile tree ({ENTRY_SIZE}-byte entries, "
            "file://): every entry re-hashed, every tile checked, root recomputed; peak RSS of "
            "the auditing process (interpreter included)."
        ),
        "entries": result["entries"],
        "tiles_checked": result["tiles"],
        "audit_entries_per_s": rate,
        "audit_ratio": rate / GOAL_RATE,
        "audit_peak_mib": result["peak_mib"],
        "audit_memory_ratio": GOAL_PEAK_MIB / result["peak_mib"],
        "goals": {"audit_ratio": 1.0, "audit_memory_ratio": 1.0},
    }
