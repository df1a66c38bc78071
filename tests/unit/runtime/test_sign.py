"""Node receipts are exactly what the reference signer, core.sign_receipt, writes."""

from __future__ import annotations

from _runtime_models import mlp_model, runner_of

from veriml.core.keys import generate_key
from veriml.core.receipt import sign_receipt
from veriml.core.tensors import tensor_digest


def test_node_receipts_are_byte_identical_to_core_sign_receipt() -> None:
    # Ed25519 is deterministic, so equal envelopes mean equal signed bytes.
    model, inputs = mlp_model()
    key = generate_key()
    result = runner_of(model).run(inputs, key=key, trace=True, request_id="r\u2028\x01é")
    outputs = {name: tensor_digest(a) for name, a in result.outputs.items()}
    assert result.receipt == sign_receipt(outputs, result.predicate, key)
