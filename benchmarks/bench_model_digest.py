"""Model digest throughput: ``veriml.models.model_digest`` against ``model_signing``'s own
hashing API (``model_signing.hashing.Config().hash``, its defaults) on the same folder.

The folder holds a few files of random bytes (1 GiB in all; 64 MiB with ``--quick``), written
once and hashed by both sides in interleaved rounds, so page cache and noise from other work on
the machine hit both alike. Both must produce the same OMS root digest, or the run fails.
``model_digest_ratio`` = veriml throughput ÷ model_signing throughput.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from model_signing import hashing as ms_hashing

from benchmarks._timing import compare_rates
from veriml.models import model_digest
from veriml.models.digest import DEFAULT_CHUNK_SIZE, root_digest

FILES = 4


def _write_folder(root: Path, total: int) -> None:
    rng = np.random.default_rng(20261126)
    per_file = total // FILES
    for i in range(FILES):
        with (root / f"weights-{i:05d}-of-{FILES:05d}.bin").open("wb") as f:
            left = per_file
            while left:
                n = min(left, 16 << 20)
                f.write(rng.bytes(n))
                left -= n
    (root / "config.json").write_text('{"model_type": "benchmark"}\n')


def run(quick: bool) -> dict[str, Any]:
    total = (64 << 20) if quick else (1 << 30)
    rounds = 3 if quick else 7
    with tempfile.TemporaryDirectory(prefix="veriml-bench-digest-") as tmp:
        root = Path(tmp)
        _write_folder(root, total)
        size = sum(p.stat().st_size for p in root.iterdir())

        def baseline() -> object:
            return ms_hashing.Config().set_ignored_paths(paths=["model.sig"]).hash(root)

        def candidate() -> object:
            return model_digest(root)

        ours, theirs = model_digest(root), root_digest(baseline())  # also warms the page cache
        if ours != theirs:
            raise AssertionError(f"digests differ: veriml {ours}, model_signing {theirs}")
        veriml_rate, ms_rate = compare_rates(candidate, baseline, iterations=1, rounds=rounds)
    return {
        "description": (
            f"OMS root digest of a {size / 2**20:.0f} MiB folder ({FILES} random files), "
            "veriml.models.model_digest vs model_signing.hashing.Config().hash, interleaved "
            f"rounds, best of {rounds}; identical digests checked."
        ),
        "model_digest_ratio": veriml_rate / ms_rate,
        "veriml_mib_per_s": veriml_rate * size / 2**20,
        "model_signing_mib_per_s": ms_rate * size / 2**20,
        "folder_bytes": size,
        "chunk_bytes": DEFAULT_CHUNK_SIZE,
        "goals": {"model_digest_ratio": 1.0},
    }
