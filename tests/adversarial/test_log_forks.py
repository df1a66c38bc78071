"""Red team: a coordinator that shows different clients different logs (docs/threat-model.md §4).

The attacker holds the log key and runs two coordinators under it, X and Y, with different
histories (a split view). Real processes throughout: two local networks, the log key files
copied from X's home to Y's, and clients in separate Python processes. Each attack must fail:

- **a forked log shown to a second process**: process A verifies an answer from X; process B,
  a fresh process of the same user, then asks Y. Without memory across processes B would
  accept Y's answer (shown below with ``checkpoints=False``); with the SDK's checkpoint store
  (default on) B refuses it with ``LogInconsistencyError``, ``check="consistency"``;
- **a checkpoint no witness cosigned**: X's network runs a witness (``veriml up`` does by
  default) and its ``network.json`` names it; a default client of that file refuses Y's answer,
  whose checkpoint the witness never saw, at ``check="checkpoint"``: the witness, which only
  cosigns one history, would never have cosigned Y's;
- the defaults are what protect: ``LocalNetwork`` writes its witness into ``network.json`` and
  a client built from the file alone requires its cosignature.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from veriml.client import Client, LocalNetwork, read_network_file
from veriml.core.errors import LogInconsistencyError, SignatureError
from veriml.core.keys import generate_key
from veriml.models.examples import build_mlp, write_example_folder

pytestmark = pytest.mark.slow

X_INPUT = {"x": np.ones((1, 4), np.float32)}


@dataclass(frozen=True)
class SplitView:
    """Two coordinators under one log key: ``x`` (witnessed) and ``y`` (a fork, no witness)."""

    x: LocalNetwork
    y: LocalNetwork
    log_vkey: str


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("model")
    folder = write_example_folder(tmp / "mlp", build_mlp((4, 8, 3), seed=7), name="mlp")
    generate_key("ec").save(tmp / "publisher.key")
    return folder, tmp / "publisher.key"


@pytest.fixture(scope="module")
def split(
    tmp_path_factory: pytest.TempPathFactory, model: tuple[Path, Path]
) -> Iterator[SplitView]:
    root = tmp_path_factory.mktemp("split")
    with LocalNetwork(root / "x", nodes=1, port=0) as x:
        # The attacker's second coordinator: X's log key, a fresh database (another history).
        keys = root / "y" / "coordinator"
        keys.mkdir(parents=True)
        for name in ("log.key", "log.key.pub", "log.key.json"):
            shutil.copy2(x.home / "coordinator" / name, keys / name)
        with LocalNetwork(root / "y", nodes=1, port=0, witnesses=0) as y:
            assert y.log_vkey == x.log_vkey
            for net in (x, y):
                with Client(net.url, log_vkey=net.log_vkey, checkpoints=False) as client:
                    client.publish(*model)
            yield SplitView(x, y, x.log_vkey)


_PROCESS_A = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from veriml.client import Client

    url, vkey = sys.argv[1], sys.argv[2]
    with Client(url, log_vkey=vkey) as client:
        answer = client.infer("mlp", {"x": np.ones((1, 4), np.float32)})
    print(json.dumps({"size": answer.log.checkpoint.decode().split("\\n")[1],
                      "verified": list(answer.verified)}))
    """
)


def test_a_forked_log_shown_to_a_second_process_is_caught(
    split: SplitView, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "user-cache"  # one user: both processes share the cache directory
    env = {**os.environ, "VERIML_CACHE_DIR": str(cache)}
    a = subprocess.run(
        [sys.executable, "-c", _PROCESS_A, split.x.url, split.log_vkey],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )
    assert a.returncode == 0, a.stderr
    seen = json.loads(a.stdout)
    assert "consistency" not in seen["verified"]  # A checked its answer; nothing to compare yet
    assert list((cache / "checkpoints").glob("*.json"))  # and remembered the checkpoint

    # Without memory across processes, Y's fork passes every check in a fresh process:
    with Client(split.y.url, log_vkey=split.log_vkey, checkpoints=False) as forgetful:
        assert "verdict" in forgetful.infer("mlp", X_INPUT).verified

    # Process B (this one), with the user's store: refused.
    monkeypatch.setenv("VERIML_CACHE_DIR", str(cache))
    with (
        Client(split.y.url, log_vkey=split.log_vkey) as b,
        pytest.raises(LogInconsistencyError) as caught,
    ):
        b.infer("mlp", X_INPUT)
    assert caught.value.check == "consistency"
    evidence = caught.value.diagnostics()
    assert f"old={seen['size']}" in evidence or f"new={seen['size']}" in evidence

    # And the store still holds X's view (the log's own signature on it), not Y's.
    with Client(split.x.url, log_vkey=split.log_vkey) as again:
        assert "verdict" in again.infer("mlp", X_INPUT).verified


def test_a_checkpoint_the_networks_witness_never_cosigned_is_refused(split: SplitView) -> None:
    # A default client of X's network.json, pointed at Y (as a coordinator could redirect it).
    with Client(split.y.url, home=split.x.home, checkpoints=False) as client:
        assert client.quorum == 1
        with pytest.raises(SignatureError) as caught:
            client.infer("mlp", X_INPUT)
    assert caught.value.check == "checkpoint"
    assert "witness quorum" in caught.value.diagnostics()


def test_a_local_network_names_its_witness_and_a_default_client_requires_it(
    split: SplitView,
) -> None:
    network = read_network_file(split.x.home)
    assert network is not None
    assert network.witnesses == tuple(split.x.witness_vkeys)
    assert (len(network.witnesses), network.witness_quorum) == (1, 1)
    witness = network.witnesses[0].split("+", 1)[0]
    with Client(home=split.x.home) as client:  # nothing but the file
        assert [w.vkey for w in client.witnesses] == list(network.witnesses)
        answer = client.infer("mlp", X_INPUT)
    assert "checkpoint" in answer.verified
    assert f"\u2014 {witness} ".encode() in answer.log.checkpoint  # the witness's cosignature
    # A network started without a witness says so, and its clients require none.
    bare = read_network_file(split.y.home)
    assert bare is not None
    assert (bare.witnesses, bare.witness_quorum) == ((), 0)
