"""Sign and verify model folders with OMS signature bundles, through ``model-signing``.

An OMS signature is a Sigstore bundle (``application/vnd.dev.sigstore.bundle.v0.3+json``)
holding a DSSE envelope whose payload is an in-toto Statement v1 with predicate type
``https://model_signing/signature/v1.0``: the subject is the folder's root digest and the
predicate lists every file and its SHA-256. See https://github.com/ossf/model-signing-spec and
https://github.com/sigstore/model-transparency. Publisher keys are EC P-256 or P-384 PEM files;
a folder signed here verifies with ``model_signing verify key`` and the reverse.

Verification fails closed and says which step failed (``check``), in this order:

1. ``signature-file``: the bundle parses;
2. ``public-key``: the bundle names the given key (its SHA-256 hint);
3. ``signature``: the ECDSA signature over the DSSE PAE verifies;
4. ``statement``: payload and statement types, and the manifest is consistent with its root;
5. ``serialization``: the manifest is per-file SHA-256 (what identifies a veriml model);
6. ``file-digest`` / ``files``: every file matches, none is missing, none is unsigned.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from model_signing import signing as ms_signing_api
from model_signing._signing import sign_ec_key as ms_ec_key
from model_signing._signing import sign_sigstore_pb as ms_sigstore_pb

from veriml.core.digest import Digest
from veriml.core.errors import (
    Check,
    DigestMismatchError,
    FormatError,
    InvalidModelError,
    KeyFileError,
    SignatureError,
    VerificationError,
)
from veriml.core.keys import load_private_key, load_public_key
from veriml.models.digest import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_SIGNATURE_NAME,
    Progress,
    _config,
    hash_manifest,
    manifest_entries,
    root_digest,
)

__all__ = [
    "MAX_SIGNATURE_BYTES",
    "default_signature_path",
    "match_folder",
    "read_bundle",
    "sign_model",
    "signed_digest",
    "verify_model",
]

# A bundle lists every file with its digest (~150 bytes each): 64 MiB is ~400k files.
MAX_SIGNATURE_BYTES = 64 << 20


def default_signature_path(path: Path) -> Path:
    """``DIR/model.sig``, where ``model_signing`` and veriml put a folder's signature."""
    return path / DEFAULT_SIGNATURE_NAME


def sign_model(
    path: Path,
    key: Path,
    *,
    signature: Path | None = None,
    passphrase: bytes | None = None,
    ignore: Iterable[Path | str] = (),
    progress: Progress | None = None,
) -> Path:
    """Sign the model folder ``path`` with the EC private key file ``key``; return the bundle.

    The bundle goes to ``signature`` (default ``path/model.sig``), which is excluded from
    the digest; ``progress`` is told ``(bytes hashed, total bytes)`` as the files are read.
    Ed25519 keys are refused with :class:`KeyFileError`: OMS key signatures are ECDSA on
    P-256 or P-384.

    >>> sign_model(Path("my-model"), Path("publisher.key"))  # doctest: +SKIP
    PosixPath('my-model/model.sig')
    """
    if not path.is_dir():
        raise InvalidModelError("a model is a folder", path=str(path))
    signing_key = load_private_key(key, passphrase=passphrase)
    if signing_key.kind != "ec":
        raise KeyFileError(
            "model signatures (OMS) need an EC P-256 or P-384 key; make one with "
            "`veriml key new --type ec`",
            path=str(key),
            got=signing_key.kind,
        )
    sig_path = signature if signature is not None else default_signature_path(path)
    hashing = _config(
        path,
        [sig_path.absolute(), *ignore],
        max_workers=None,
        chunk_size=DEFAULT_CHUNK_SIZE,
        progress=progress,
    )
    # model_signing passes the password straight to cryptography, which takes bytes.
    config = ms_signing_api.Config().use_elliptic_key_signer(  # type: ignore[no-untyped-call]
        private_key=key,
        password=passphrase,  # type: ignore[arg-type]
    )
    config.set_hashing_config(hashing)
    try:
        config.sign(path, sig_path)
    except ValueError as exc:
        raise InvalidModelError(
            "model folder cannot be signed: it holds a symlink or special file",
            path=str(path),
            reason=str(exc),
        ) from exc
    except OSError as exc:
        raise InvalidModelError(
            "cannot read the model or write the signature",
            path=exc.filename or str(path),
            reason=exc.strerror,
        ) from exc
    return sig_path


def read_bundle(sig_path: Path) -> Any:
    try:
        size = sig_path.stat().st_size
    except OSError as exc:
        raise SignatureError(
            "cannot read the signature file",
            check=Check.SIGNATURE_FILE,
            path=str(sig_path),
            reason=exc.strerror,
        ) from exc
    if size > MAX_SIGNATURE_BYTES:
        raise SignatureError(
            "signature file is too large",
            check=Check.SIGNATURE_FILE,
            path=str(sig_path),
            size=size,
            limit=MAX_SIGNATURE_BYTES,
        )
    try:
        return ms_sigstore_pb.Signature.read(sig_path)
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise SignatureError(
            "not an OMS signature bundle",
            check=Check.SIGNATURE_FILE,
            path=str(sig_path),
            reason=f"{type(exc).__name__}: {exc}",
        ) from exc


def signed_digest(signature: Path) -> Digest:
    """The root digest an OMS bundle *claims* to sign, read without verifying anything.

    Useful to show what a signature is about; use :func:`verify_model` to trust it.
    """
    bundle = read_bundle(signature)
    try:
        statement = json.loads(bundle.bundle.dsse_envelope.payload)
        return Digest.from_hex(statement["subject"][0]["digest"]["sha256"])
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, FormatError) as exc:
        raise SignatureError(
            "the bundle holds no OMS statement subject",
            check=Check.STATEMENT,
            path=str(signature),
            reason=f"{type(exc).__name__}: {exc}",
        ) from exc


def _signed_manifest(bundle: Any, pubkey: Path, sig_path: Path) -> Any:
    public = load_public_key(pubkey, kind="ec")
    verifier = ms_ec_key.Verifier(pubkey)
    hint = bundle.bundle.verification_material.public_key
    if hint is not None and hint.hint:
        ours = hashlib.sha256(public.to_pem()).hexdigest()
        if hint.hint != ours:
            raise SignatureError(
                "the model was signed by a different key",
                check=Check.PUBLIC_KEY,
                signature=str(sig_path),
                signed_by=hint.hint,
                given=ours,
            )
    try:
        return verifier.verify(bundle)
    except InvalidSignature as exc:
        raise SignatureError(
            "the signature does not verify with this key",
            check=Check.SIGNATURE,
            signature=str(sig_path),
            keyid=public.key_id,
        ) from exc
    except (ValueError, KeyError, TypeError, IndexError, json.JSONDecodeError) as exc:
        raise SignatureError(
            "the signed statement is not a valid OMS statement",
            check=Check.STATEMENT,
            signature=str(sig_path),
            reason=f"{type(exc).__name__}: {exc}",
        ) from exc


def verify_model(
    path: Path,
    pubkey: Path,
    *,
    signature: Path | None = None,
    ignore: Iterable[Path | str] = (),
    progress: Progress | None = None,
) -> Digest:
    """Check that the folder ``path`` is exactly what the OMS bundle signed; return its digest.
    ``progress`` is told ``(bytes hashed, total bytes)`` as the files are read.

    The returned digest is the OMS root digest, equal to :func:`model_digest` of the folder.
    Raises :class:`SignatureError` (bundle, key or signature), :class:`DigestMismatchError` (a file
    was modified: ``path`` names it) or :class:`VerificationError` (files added or removed).
    Returns nothing else: if it returns, the folder is signed by ``pubkey``.
    """
    sig_path = signature if signature is not None else default_signature_path(path)
    if not path.is_dir():
        raise InvalidModelError("a model is a folder", path=str(path))
    bundle = read_bundle(sig_path)  # 1
    expected = _signed_manifest(bundle, pubkey, sig_path)  # 2, 3, 4
    return match_folder(path, expected, sig_path, ignore, progress=progress)  # 5, 6


def match_folder(
    path: Path,
    expected: Any,
    sig_path: Path,
    ignore: Iterable[Path | str] = (),
    *,
    progress: Progress | None = None,
) -> Digest:
    """Steps 5 and 6: the folder is exactly the verified manifest ``expected``; its digest."""
    params = expected.serialization_type  # 5
    if params.get("method") != "files" or params.get("hash_type") != "sha256":
        raise VerificationError(
            "only per-file SHA-256 OMS signatures identify a veriml model",
            check=Check.SERIALIZATION,
            method=params.get("method"),
            hash_type=params.get("hash_type"),
        )
    actual = hash_manifest(path, ignore=[sig_path.absolute(), *ignore], progress=progress)  # 6
    try:
        signed = {e.path: e.digest for e in manifest_entries(expected)}
    except InvalidModelError as exc:
        raise VerificationError(
            "the signed manifest is not per-file SHA-256", check=Check.SERIALIZATION, **exc.evidence
        ) from exc
    found = {e.path: e.digest for e in manifest_entries(actual)}
    for name in sorted(signed.keys() & found.keys()):
        if signed[name] != found[name]:
            raise DigestMismatchError(
                f"file {name} was modified after signing",
                check=Check.FILE_DIGEST,
                expected=signed[name],
                calculated=found[name],
            )
    missing = sorted(signed.keys() - found.keys())
    if missing:
        raise VerificationError(
            f"signed file {missing[0]} is missing", check=Check.FILES, missing=", ".join(missing)
        )
    unsigned = sorted(found.keys() - signed.keys())
    if unsigned:
        raise VerificationError(
            f"file {unsigned[0]} is not covered by the signature",
            check=Check.FILES,
            unsigned=", ".join(unsigned),
        )
    digest = root_digest(actual)
    claimed = root_digest(expected)
    if digest != claimed:  # unreachable when every file matches; kept to fail closed
        raise DigestMismatchError(
            "model root digest differs from the signed one",
            check=Check.ROOT_DIGEST,
            expected=claimed,
            calculated=digest,
        )
    return digest
