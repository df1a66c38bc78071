"""Receipts: an inference result file (outputs, signed receipt, inputs, trace) verifies or
raises a FormatError or VerificationError, and so does a completion receipt; a receipt nobody
signed again verifies only with the predicate and outputs its node signed."""

from __future__ import annotations

import dataclasses
import functools
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from _fuzzing import attempt, dumps, fuzz_settings, mutated_json, raw_json_bytes
from hypothesis import example, given
from hypothesis import strategies as st

from _ledger import account
from veriml.core.canonical import parse_json_object
from veriml.core.completion import (
    CompletionPredicate,
    Sampling,
    completion_output_digest,
    open_completion,
    sign_completion,
    token_digest,
)
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.errors import FormatError, VerificationError
from veriml.models.examples import build_mlp, write_example_folder
from veriml.runtime import run
from veriml.verify import verify_receipt

NODE = account("fuzz-node")


@functools.cache
def inference_results() -> tuple[list[dict[str, Any]], Any]:
    """Real result files of the example MLP: traced with inputs, and untraced in base64."""
    folder = write_example_folder(
        Path(tempfile.mkdtemp(prefix="veriml-fuzz-")) / "mlp", build_mlp((4, 8, 3)), name="mlp"
    )
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    traced = run(folder, {"x": x}, key=NODE, trace=True, request_id="req-1")
    plain = run(folder, {"x": x[:1]}, key=NODE, policy="quorum:2/3")
    results = [traced.to_json(), plain.to_json(include_inputs=False)]
    results[1]["outputs"] = {
        name: {**value, "b64": _b64(np.asarray(plain.outputs[name]))}
        for name, value in results[1]["outputs"].items()
    }
    for value in results[1]["outputs"].values():
        value.pop("data", None)
    return results, traced.predicate


def _b64(array: np.ndarray[Any, Any]) -> str:
    import base64

    return base64.b64encode(array.astype(array.dtype.newbyteorder("<")).tobytes()).decode()


def _result_inputs() -> st.SearchStrategy[tuple[bytes, bool]]:
    results, _ = inference_results()
    return st.one_of(
        mutated_json(results, signers=[NODE]).map(lambda t: (dumps(t[0]), t[1])),
        raw_json_bytes().map(lambda b: (b, False)),
    )


@fuzz_settings(short=60)
@given(st.deferred(_result_inputs))
# Found by this target's rendering check: a lone surrogate in evidence made the problem a 500.
@example((dumps({"outputs": {}, "receipt": {}, "\ud800": 1}), False))
def test_a_result_file_verifies_only_as_its_node_signed_it(case: tuple[bytes, bool]) -> None:
    data, resigned = case
    results, _ = inference_results()

    def verify() -> Any:
        return verify_receipt(parse_json_object(data, what="result file"), node_key=NODE.public)

    verified, _ = attempt(verify, allowed=(FormatError, VerificationError), size=len(data))
    if verified is not None and not resigned:
        originals = [verify_receipt(r, node_key=NODE.public) for r in results]
        assert any(
            verified.predicate == o.predicate and verified.output_digests == o.output_digests
            for o in originals
        )


OUTPUT = completion_output_digest(
    content="Hello", tool_calls=[], tokens=[1, 2, 3], finish_reason="length"
)
PREDICATE = CompletionPredicate(
    request_id="req-1",
    request_digest=Digest.of(b"request"),
    model_digest=Digest.of(b"model"),
    model_files=Digest.of(b"files"),
    prompt_count=2,
    prompt_digest=token_digest([5, 6]),
    completion_count=3,
    finish_reason="length",
    sampling=Sampling(temperature=0.7, top_p=0.9, top_k=40, seed=7),
    runtime={"engine": "llama.cpp", "threads": 1},
    node_id=NODE.key_id,
    policy="quorum:2/3",
    trust="reexecutable",
    started="2026-11-26T10:00:00.000000Z",
    finished="2026-11-26T10:00:01.000000Z",
    spot=Digest.of(b"spot"),
)
RELAY = dataclasses.replace(
    PREDICATE,
    model_digest=None,
    model_files=None,
    upstream={"name": "gpt-x", "url": "https://api.example"},
    trust="attested-relay",
    sampling=None,
)
RECEIPTS = [sign_completion(OUTPUT, p, NODE) for p in (PREDICATE, RELAY)]


@fuzz_settings()
@given(
    st.one_of(
        mutated_json([r.to_json() for r in RECEIPTS], signers=[NODE]),
        st.tuples(
            st.dictionaries(st.sampled_from(["payloadType", "payload"]), st.text()), st.just(False)
        ),
    )
)
def test_a_completion_receipt_opens_only_as_its_node_signed_it(case: tuple[Any, bool]) -> None:
    obj, resigned = case
    size = len(dumps(obj))

    def open_() -> tuple[CompletionPredicate, Digest]:
        return open_completion(Envelope.from_json(obj), NODE.public)

    opened, _ = attempt(open_, allowed=(FormatError, VerificationError), size=size)
    if opened is not None and not resigned:
        assert opened in [(PREDICATE, OUTPUT), (RELAY, OUTPUT)]
