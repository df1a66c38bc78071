"""Verify OMS signatures made with an X.509 signing certificate, offline.

``model_signing sign certificate`` puts the signing certificate and its chain in the bundle's
verification material; verification builds the chain to roots the verifier trusts, as of the
certificate's start of validity (as ``model_signing`` does: the signature has no trusted
timestamp, so "valid when issued" is the best available), and requires the certificate to be
usable for signing (KeyUsage digitalSignature or ExtendedKeyUsage codeSigning). Nothing is
fetched from the network: the roots are the files given, never the system store.

A chain to a root says *some* certificate under that root signed; callers that care *who*
signed pass ``identity`` (compared with the subject common name, e-mail SAN and URI SAN) or
read :attr:`CertifiedModel.subject`.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from model_signing._signing import sign_certificate as ms_certificate
from OpenSSL import crypto

from veriml.core.digest import Digest
from veriml.core.errors import Check, InvalidModelError, KeyFileError, SignatureError
from veriml.models.digest import Progress
from veriml.models.signing import default_signature_path, match_folder, read_bundle

__all__ = ["CertifiedModel", "verify_model_certificate"]

MAX_ROOTS_BYTES = 4 << 20


@dataclass(frozen=True, slots=True)
class CertifiedModel:
    """A verified model folder and who signed it: the signing certificate's names."""

    digest: Digest
    subject: str
    identities: tuple[str, ...]
    fingerprint: str

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": str(self.digest),
            "subject": self.subject,
            "identities": list(self.identities),
            "certificate_sha256": self.fingerprint,
        }


def _load_roots(paths: Sequence[Path]) -> None:
    if not paths:
        raise KeyFileError("certificate verification needs at least one trusted root file")
    for path in paths:
        try:
            size = path.stat().st_size
            if size > MAX_ROOTS_BYTES:
                raise KeyFileError("certificate file is too large", path=str(path), size=size)
            x509.load_pem_x509_certificates(path.read_bytes())
        except OSError as exc:
            raise KeyFileError(
                "cannot read certificate file", path=str(path), reason=exc.strerror
            ) from exc
        except ValueError as exc:
            raise KeyFileError("not a PEM certificate file", path=str(path)) from exc


def _identities(cert: x509.Certificate) -> tuple[str, ...]:
    names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names += san.get_values_for_type(x509.RFC822Name)
        names += san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        pass
    return tuple(names)


def _signing_certificate(bundle: Any, sig_path: Path) -> x509.Certificate:
    try:
        chain = bundle.bundle.verification_material.x509_certificate_chain
        return x509.load_der_x509_certificate(chain.certificates[0].raw_bytes)
    except (AttributeError, IndexError, TypeError, ValueError) as exc:
        raise SignatureError(
            "the bundle holds no signing certificate (signed with a bare key?)",
            check=Check.CERTIFICATE,
            signature=str(sig_path),
        ) from exc


def verify_model_certificate(
    path: Path,
    roots: Sequence[Path],
    *,
    signature: Path | None = None,
    identity: str | None = None,
    ignore: Iterable[Path | str] = (),
    progress: Progress | None = None,
) -> CertifiedModel:
    """Check a certificate-signed OMS bundle against the trusted ``roots`` (PEM files).

    Steps as :func:`verify_model`, with ``public-key`` replaced by ``certificate`` (the chain
    builds to a root, the certificate may sign, and names ``identity`` if given).
    """
    sig_path = signature if signature is not None else default_signature_path(path)
    if not path.is_dir():
        raise InvalidModelError("a model is a folder", path=str(path))
    _load_roots(roots)
    bundle = read_bundle(sig_path)
    cert = _signing_certificate(bundle, sig_path)
    verifier = ms_certificate.Verifier(list(roots))
    try:
        with warnings.catch_warnings():
            # model_signing logs a missing KeyUsage with the deprecated Logger.warn.
            warnings.simplefilter("ignore", DeprecationWarning)
            expected = verifier.verify(bundle)
    except crypto.X509StoreContextError as exc:
        raise SignatureError(
            "the signing certificate does not chain to a trusted root",
            check=Check.CERTIFICATE,
            subject=cert.subject.rfc4514_string(),
            reason=str(exc),
        ) from exc
    except InvalidSignature as exc:
        raise SignatureError(
            "the signature does not verify with the signing certificate",
            check=Check.SIGNATURE,
            signature=str(sig_path),
        ) from exc
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise SignatureError(
            "the certificate cannot sign, or the signed statement is invalid",
            check=Check.CERTIFICATE if "certificate" in str(exc) else "statement",
            signature=str(sig_path),
            reason=f"{type(exc).__name__}: {exc}",
        ) from exc
    names = _identities(cert)
    if identity is not None and identity not in names:
        raise SignatureError(
            "the model was signed by another identity",
            check=Check.CERTIFICATE,
            expected=identity,
            signed_by=", ".join(names) or cert.subject.rfc4514_string(),
        )
    digest = match_folder(path, expected, sig_path, ignore, progress=progress)
    fingerprint = hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
    return CertifiedModel(digest, cert.subject.rfc4514_string(), names, fingerprint)
