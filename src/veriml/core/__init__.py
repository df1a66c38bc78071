"""Core formats shared by every other package: digests, canonical JSON, tensors, keys,
DSSE/in-toto envelopes and the error hierarchy. Pure logic; the only I/O is key files.

Each name loads its module on first use (:mod:`veriml.core.lazy`): the error tree or a digest
never imports NumPy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from veriml.core.lazy import lazy_exports

# name -> the module of veriml.core that defines it
_EXPORTS: dict[str, str] = {
    "canonical_digest": ".canonical",
    "canonicalize": ".canonical",
    "parse_json_object": ".canonical",
    "COMPLETION_PREDICATE_TYPE": ".completion",
    "CompletionPredicate": ".completion",
    "Sampling": ".completion",
    "open_completion": ".completion",
    "sign_completion": ".completion",
    "Digest": ".digest",
    "sha256_stream": ".digest",
    "INTOTO_PAYLOAD_TYPE": ".dsse",
    "STATEMENT_TYPE": ".dsse",
    "Envelope": ".dsse",
    "Signature": ".dsse",
    "Statement": ".dsse",
    "Subject": ".dsse",
    "pae": ".dsse",
    "KeyKind": ".keys",
    "SigningKey": ".keys",
    "VerifyingKey": ".keys",
    "generate_key": ".keys",
    "load_private_key": ".keys",
    "load_public_key": ".keys",
    "canonical_tensor_bytes": ".tensors",
    "tensor_digest": ".tensors",
    "tensor_from_canonical": ".tensors",
    "tensor_from_json": ".tensors",
    "tensor_from_npy": ".tensors",
    "tensor_to_json": ".tensors",
    "tensor_to_npy": ".tensors",
}

__all__ = [
    "COMPLETION_PREDICATE_TYPE",
    "INTOTO_PAYLOAD_TYPE",
    "STATEMENT_TYPE",
    "CompletionPredicate",
    "Digest",
    "Envelope",
    "KeyKind",
    "Sampling",
    "Signature",
    "SigningKey",
    "Statement",
    "Subject",
    "VerifyingKey",
    "canonical_digest",
    "canonical_tensor_bytes",
    "canonicalize",
    "generate_key",
    "load_private_key",
    "load_public_key",
    "open_completion",
    "pae",
    "parse_json_object",
    "sha256_stream",
    "sign_completion",
    "tensor_digest",
    "tensor_from_canonical",
    "tensor_from_json",
    "tensor_from_npy",
    "tensor_to_json",
    "tensor_to_npy",
]

if TYPE_CHECKING:
    from veriml.core.canonical import canonical_digest, canonicalize, parse_json_object
    from veriml.core.completion import (
        COMPLETION_PREDICATE_TYPE,
        CompletionPredicate,
        Sampling,
        open_completion,
        sign_completion,
    )
    from veriml.core.digest import Digest, sha256_stream
    from veriml.core.dsse import (
        INTOTO_PAYLOAD_TYPE,
        STATEMENT_TYPE,
        Envelope,
        Signature,
        Statement,
        Subject,
        pae,
    )
    from veriml.core.keys import (
        KeyKind,
        SigningKey,
        VerifyingKey,
        generate_key,
        load_private_key,
        load_public_key,
    )
    from veriml.core.tensors import (
        canonical_tensor_bytes,
        tensor_digest,
        tensor_from_canonical,
        tensor_from_json,
        tensor_from_npy,
        tensor_to_json,
        tensor_to_npy,
    )

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
