"""``veriml model digest DIR`` as a whole process, as a new user runs it, against a process
that hashes the same folder with ``model_signing``'s own API (``hashing.Config().hash``).

``bench_model_digest`` compares the hashing alone, in one process; this one adds what a command
pays before it hashes: the interpreter, the imports (a digest must not import the ONNX stack,
docs/models.md "Installing") and the CLI. The folder holds random bytes (2 GiB in all; 64 MiB
with ``--quick``), written once, then both commands run in interleaved rounds so page cache and
noise from other work hit both alike; best round of each. The veriml command must print the
digest model_signing computes, or the run fails.

``model_digest_process_ratio`` = model_signing's time ÷ veriml's time (veriml's speed as a
share of model_signing's: ≥ 1.0 means at least as fast). The ``*_startup_s`` fields time the
same two commands on a one-file folder: what each pays before hashing.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from model_signing import hashing as ms_hashing

from benchmarks._timing import compare_rates
from benchmarks.bench_model_digest import FILES, _write_folder
from veriml.models.digest import root_digest

# What a user of the library writes: import it, hash the folder with its defaults.
_MODEL_SIGNING = (
    "import sys\n"
    "from model_signing import hashing\n"
    "hashing.Config().set_ignored_paths(paths=['model.sig']).hash(sys.argv[1])\n"
)


def _veriml(folder: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "veriml", "model", "digest", str(folder)],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def _model_signing(folder: Path) -> None:
    subprocess.run([sys.executable, "-c", _MODEL_SIGNING, str(folder)], check=True)


def run(quick: bool) -> dict[str, Any]:
    total = (64 << 20) if quick else (2 << 30)
    rounds = 3 if quick else 5
    with tempfile.TemporaryDirectory(prefix="veriml-bench-digest-process-") as tmp:
        root = Path(tmp) / "model"
        root.mkdir()
        _write_folder(root, total)
        size = sum(p.stat().st_size for p in root.iterdir())
        # Also warms the page cache for both commands.
        expected = str(
            root_digest(ms_hashing.Config().set_ignored_paths(paths=["model.sig"]).hash(root))
        )
        if (printed := _veriml(root)) != expected:
            raise AssertionError(f"digests differ: veriml {printed}, model_signing {expected}")
        veriml_rate, ms_rate = compare_rates(
            lambda: _veriml(root), lambda: _model_signing(root), iterations=1, rounds=rounds
        )
        tiny = Path(tmp) / "tiny"
        tiny.mkdir()
        (tiny / "config.json").write_text("{}\n")
        start_veriml, start_ms = compare_rates(
            lambda: _veriml(tiny), lambda: _model_signing(tiny), iterations=1, rounds=rounds
        )
    return {
        "description": (
            f"`veriml model digest` of a {size / 2**30:.2f} GiB folder ({FILES} random files) "
            "as a whole process vs a process hashing it with model_signing.hashing.Config()."
            f"hash; interleaved rounds, best of {rounds}; identical digests checked."
        ),
        "model_digest_process_ratio": veriml_rate / ms_rate,
        "veriml_process_s": 1 / veriml_rate,
        "model_signing_process_s": 1 / ms_rate,
        "veriml_startup_s": 1 / start_veriml,
        "model_signing_startup_s": 1 / start_ms,
        "folder_bytes": size,
        "goals": {"model_digest_process_ratio": 0.9},
    }
