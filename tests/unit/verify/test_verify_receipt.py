"""verify_receipt: each check, in order, and the first failure is the one named."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from veriml.core.canonical import canonicalize
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope, Statement
from veriml.core.errors import (
    DigestMismatchError,
    FormatError,
    ReexecutionMismatchError,
    SignatureError,
    VerificationError,
)
from veriml.core.keys import SigningKey, generate_key
from veriml.core.receipt import TraceCommitment, request_digest, sign_receipt
from veriml.core.tensors import tensor_digest
from veriml.models import ModelPackage
from veriml.models.examples import build_mlp, write_example_folder
from veriml.runtime import RunResult, canonical_request, run
from veriml.verify import VerifiedReceipt, verify_receipt

X = {"x": np.random.default_rng(7).standard_normal((2, 16)).astype(np.float32)}


@pytest.fixture(scope="module")
def node_key() -> SigningKey:
    return generate_key("ed25519")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_example_folder(
        tmp_path_factory.mktemp("verify") / "mlp", build_mlp((16, 24, 4)), name="mlp"
    )


@pytest.fixture(scope="module")
def result(folder: Path, node_key: SigningKey) -> RunResult:
    return run(folder, X, key=node_key, trace=True)


def _resign(doc: dict[str, Any], statement: dict[str, Any], key: SigningKey) -> dict[str, Any]:
    envelope = Envelope.sign(canonicalize(statement), [key])
    return doc | {"receipt": envelope.to_json()}


def _statement(doc: dict[str, Any]) -> dict[str, Any]:
    payload = base64.b64decode(doc["receipt"]["payload"])
    return json.loads(payload)


def _check(exc: pytest.ExceptionInfo[VerificationError]) -> str | None:
    return exc.value.check


def test_an_honest_result_verifies_through_every_check(
    result: RunResult, folder: Path, node_key: SigningKey
) -> None:
    verified = verify_receipt(result, node_key=node_key.public, model=folder, reexecute=True)
    assert isinstance(verified, VerifiedReceipt)
    assert verified.checks == (
        "signature",
        "statement-type",
        "predicate-type",
        "output-digest",
        "input-digest",
        "model-digest",
        "reexecution",
    )
    assert verified.model_checked
    assert verified.reexecuted
    assert verified.predicate == result.predicate
    assert "receipt OK" in verified.summary()


def test_a_result_file_on_disk_verifies(
    result: RunResult, tmp_path: Path, node_key: SigningKey, folder: Path
) -> None:
    path = tmp_path / "result.json"
    path.write_bytes(result.to_bytes())
    verified = verify_receipt(path, node_key=node_key.public, model=ModelPackage.load(folder))
    assert verified.output_digests == {n: tensor_digest(a) for n, a in result.outputs.items()}


def test_without_a_trusted_key_nothing_is_trusted(result: RunResult) -> None:
    with pytest.raises(SignatureError, match="no trusted node key") as info:
        verify_receipt(result)
    assert _check(info) == "signature"


def test_a_different_node_key_fails_the_signature_check(result: RunResult) -> None:
    with pytest.raises(SignatureError) as info:
        verify_receipt(result, node_key=generate_key().public)
    assert _check(info) == "signature"


def test_a_tampered_payload_fails_the_signature_check(
    result: RunResult, node_key: SigningKey
) -> None:
    doc = result.to_json()
    statement = _statement(doc)
    statement["predicate"]["policy"] = "quorum:3/2"
    doc["receipt"]["payload"] = base64.b64encode(canonicalize(statement)).decode()
    with pytest.raises(SignatureError) as info:
        verify_receipt(doc, node_key=node_key.public)
    assert _check(info) == "signature"


def test_a_signed_non_statement_fails_the_statement_type_check(
    result: RunResult, node_key: SigningKey
) -> None:
    statement = _statement(result.to_json()) | {"_type": "https://in-toto.io/Statement/v0.1"}
    doc = _resign(result.to_json(), statement, node_key)
    with pytest.raises(VerificationError) as info:
        verify_receipt(doc, node_key=node_key.public)
    assert _check(info) == "statement-type"


def test_a_signed_other_predicate_fails_the_predicate_type_check(
    result: RunResult, node_key: SigningKey
) -> None:
    statement = _statement(result.to_json()) | {"predicateType": "https://slsa.dev/provenance/v1"}
    with pytest.raises(VerificationError) as info:
        verify_receipt(_resign(result.to_json(), statement, node_key), node_key=node_key.public)
    assert _check(info) == "predicate-type"


def test_a_malformed_predicate_fails_the_predicate_type_check(
    result: RunResult, node_key: SigningKey
) -> None:
    statement = _statement(result.to_json())
    del statement["predicate"]["model"]
    with pytest.raises(VerificationError) as info:
        verify_receipt(_resign(result.to_json(), statement, node_key), node_key=node_key.public)
    assert _check(info) == "predicate-type"


def test_a_receipt_naming_another_node_fails_the_signature_check(
    result: RunResult, node_key: SigningKey
) -> None:
    statement = _statement(result.to_json())
    statement["predicate"]["node"]["id"] = generate_key().key_id
    with pytest.raises(SignatureError, match="different node") as info:
        verify_receipt(_resign(result.to_json(), statement, node_key), node_key=node_key.public)
    assert _check(info) == "signature"


def test_a_tampered_output_value_fails_the_output_digest_check(
    result: RunResult, node_key: SigningKey
) -> None:
    outputs = {n: a.copy() for n, a in result.outputs.items()}
    outputs["probs"][0, 0] = np.float32(0.5)
    with pytest.raises(DigestMismatchError) as info:
        verify_receipt(replace(result, outputs=outputs), node_key=node_key.public)
    assert _check(info) == "output-digest"
    assert info.value.expected == tensor_digest(result.outputs["probs"])


@pytest.mark.parametrize("change", ["extra", "missing"])
def test_output_names_must_match_the_signed_subjects_exactly(
    result: RunResult, node_key: SigningKey, change: str
) -> None:
    outputs = dict(result.outputs)
    if change == "extra":
        outputs["bonus"] = np.zeros(1, np.float32)
    else:
        outputs.clear()
    with pytest.raises(VerificationError) as info:
        verify_receipt(replace(result, outputs=outputs), node_key=node_key.public)
    assert _check(info) == "output-digest"


def test_tampered_inputs_fail_the_input_digest_check(
    result: RunResult, node_key: SigningKey
) -> None:
    doc = result.to_json()
    doc["inputs"]["x"]["data"][0][0] += 1.0
    with pytest.raises(DigestMismatchError) as info:
        verify_receipt(doc, node_key=node_key.public)
    assert _check(info) == "input-digest"


def test_another_model_folder_fails_the_model_digest_check(
    result: RunResult, node_key: SigningKey, tmp_path: Path
) -> None:
    other = write_example_folder(tmp_path / "other", build_mlp((16, 24, 4), seed=1), name="mlp")
    with pytest.raises(DigestMismatchError) as info:
        verify_receipt(result, node_key=node_key.public, model=other)
    assert _check(info) == "model-digest"


def test_a_node_signing_wrong_outputs_is_caught_by_reexecution(
    result: RunResult, node_key: SigningKey, folder: Path
) -> None:
    # A dishonest node: its receipt is self-consistent, but the outputs are not the model's.
    outputs = {"probs": result.outputs["probs"] * np.float32(0.5)}
    predicate = replace(result.predicate, trace=None)
    receipt = sign_receipt({"probs": tensor_digest(outputs["probs"])}, predicate, node_key)
    forged = RunResult(outputs, receipt, predicate, None, result.inputs)
    verify_receipt(forged, node_key=node_key.public, model=folder)  # checks 1-4 pass
    with pytest.raises(ReexecutionMismatchError) as info:
        verify_receipt(forged, node_key=node_key.public, model=folder, reexecute=True)
    assert _check(info) == "reexecution"


def test_a_forged_trace_commitment_is_caught_by_reexecution(
    result: RunResult, node_key: SigningKey, folder: Path
) -> None:
    assert result.predicate.trace is not None
    predicate = replace(
        result.predicate, trace=TraceCommitment(Digest.of(b"forged"), result.predicate.trace.size)
    )
    digests = {n: tensor_digest(a) for n, a in result.outputs.items()}
    forged = RunResult(
        result.outputs, sign_receipt(digests, predicate, node_key), predicate, None, result.inputs
    )
    with pytest.raises(ReexecutionMismatchError, match="trace") as info:
        verify_receipt(forged, node_key=node_key.public, model=folder, reexecute=True)
    assert _check(info) == "reexecution"


def test_reexecution_without_the_model_fails_closed(
    result: RunResult, node_key: SigningKey
) -> None:
    with pytest.raises(VerificationError, match="needs the model") as info:
        verify_receipt(result, node_key=node_key.public, reexecute=True)
    assert _check(info) == "reexecution"


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"outputs": {}},
        {"outputs": {}, "receipt": {}, "surprise": 1},
        {"outputs": {"y": {"dtype": "float32", "shape": [2], "data": [1]}}, "receipt": {}},
    ],
)
def test_malformed_result_files_are_format_errors(doc: dict[str, Any]) -> None:
    with pytest.raises(FormatError):
        verify_receipt(doc, node_key=generate_key().public)


def test_statement_payload_is_what_the_verified_predicate_comes_from(
    result: RunResult, node_key: SigningKey
) -> None:
    # A RunResult whose in-memory predicate disagrees with the signed payload is judged by
    # the payload: the unsigned copy is never trusted.
    lying = replace(result, predicate=replace(result.predicate, policy="zk"))
    verified = verify_receipt(lying, node_key=node_key.public)
    assert (
        verified.predicate.policy
        == Statement.from_bytes(result.receipt.payload).predicate["policy"]
    )


def test_inputs_given_by_the_caller_are_checked_and_used_for_reexecution(
    result: RunResult, node_key: SigningKey, folder: Path
) -> None:
    doc = result.to_json(include_inputs=False)
    with pytest.raises(VerificationError, match="needs the model and the inputs"):
        verify_receipt(doc, node_key=node_key.public, model=folder, reexecute=True)
    verified = verify_receipt(doc, node_key=node_key.public, model=folder, reexecute=True, inputs=X)
    assert "input-digest" in verified.checks
    other = {"x": X["x"] + np.float32(1)}
    with pytest.raises(DigestMismatchError) as info:
        verify_receipt(doc, node_key=node_key.public, inputs=other)
    assert _check(info) == "input-digest"


def test_signed_inputs_the_model_cannot_take_fail_reexecution_not_usage(
    result: RunResult, node_key: SigningKey, folder: Path
) -> None:
    wrong = {"x": np.zeros((2, 15), np.float32)}
    digests = {n: tensor_digest(a) for n, a in result.outputs.items()}
    inputs = {"x": tensor_digest(wrong["x"])}
    request = canonical_request(result.predicate.model_digest, inputs, result.predicate.policy)
    predicate = replace(
        result.predicate, inputs=inputs, request_digest=request_digest(request), trace=None
    )
    forged = RunResult(
        result.outputs, sign_receipt(digests, predicate, node_key), predicate, None, wrong
    )
    with pytest.raises(VerificationError, match="cannot be re-executed") as info:
        verify_receipt(forged, node_key=node_key.public, model=folder, reexecute=True, inputs=wrong)
    assert _check(info) == "reexecution"


def test_a_folder_with_the_same_root_digest_but_renamed_files_fails_model_digest(
    tmp_path: Path, node_key: SigningKey
) -> None:
    # The OMS root digest hashes file digests in path order, not names: swapping which file
    # is called model.onnx keeps the root digest but runs another graph. The receipt's
    # layout digest catches it.
    import onnx

    first = tmp_path / "first"
    first.mkdir()
    onnx.save_model(build_mlp((16, 24, 4), seed=1), first / "model.onnx")
    onnx.save_model(build_mlp((16, 24, 4), seed=2), first / "x.onnx")
    second = tmp_path / "second"
    second.mkdir()
    (second / "a.onnx").write_bytes((first / "model.onnx").read_bytes())
    (second / "model.onnx").write_bytes((first / "x.onnx").read_bytes())
    assert ModelPackage.load(first).digest == ModelPackage.load(second).digest

    honest = run(first, X, key=node_key)
    verify_receipt(honest, node_key=node_key.public, model=first)
    with pytest.raises(DigestMismatchError, match="layout") as info:
        verify_receipt(honest, node_key=node_key.public, model=second)
    assert _check(info) == "model-digest"


def test_a_receipt_without_a_layout_digest_cannot_be_checked_against_a_folder(
    folder: Path, result: RunResult, node_key: SigningKey
) -> None:
    doc = result.to_json()
    statement = _statement(doc)
    del statement["predicate"]["model"]["files"]
    with pytest.raises(DigestMismatchError) as info:
        verify_receipt(_resign(doc, statement, node_key), node_key=node_key.public, model=folder)
    assert _check(info) == "model-digest"
