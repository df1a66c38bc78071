"""Publishing: sign a model folder when needed, and stream it as a tar archive.

The archive is written header by header and chunk by chunk (POSIX ustar/pax headers from
:mod:`tarfile`, https://pubs.opengroup.org/onlinepubs/9699919799/utilities/pax.html), so a
multi-gigabyte model is uploaded without ever being held in memory.
"""

from __future__ import annotations

import base64
import os
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from veriml.core.errors import InvalidModelError as InvalidModel
from veriml.core.errors import VerificationError
from veriml.core.keys import SigningKey, load_private_key

__all__ = ["CHUNK", "ensure_signed", "model_files", "publisher_header", "tar_stream"]

CHUNK = 1 << 20
_BLOCK = tarfile.BLOCKSIZE


def model_files(folder: Path) -> list[tuple[str, Path]]:
    """Every regular file under ``folder`` as (relative POSIX path, path), sorted by name."""
    if not folder.is_dir():
        raise InvalidModel("a model is a folder", path=str(folder))
    files: list[tuple[str, Path]] = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            path = Path(root) / name
            if path.is_symlink() or not path.is_file():
                raise InvalidModel("model folders hold regular files only", path=str(path))
            files.append((path.relative_to(folder).as_posix(), path))
    return sorted(files)


def tar_stream(folder: Path, *, chunk: int = CHUNK) -> Iterator[bytes]:
    """The folder as an uncompressed tar stream, produced lazily."""
    for name, path in model_files(folder):
        size = path.stat().st_size
        info = tarfile.TarInfo(name)
        info.size = size
        info.mode = 0o644
        yield info.tobuf(format=tarfile.PAX_FORMAT)
        written = 0
        with path.open("rb") as f:
            while written < size:
                data = f.read(min(chunk, size - written))
                if not data:
                    raise InvalidModel("model file shrank while uploading", path=str(path))
                written += len(data)
                yield data
        if size % _BLOCK:
            yield b"\0" * (_BLOCK - size % _BLOCK)
    yield b"\0" * (2 * _BLOCK)


def publisher_header(key: SigningKey) -> str:
    """``X-Veriml-Publisher-Key``: the publisher's PEM public key, base64."""
    return base64.b64encode(key.public.to_pem()).decode()


def ensure_signed(folder: Path, key: Path, *, passphrase: bytes | None = None) -> SigningKey:
    """Sign ``folder`` with the EC key ``key`` unless its ``model.sig`` already verifies under
    that key (absent, stale or someone else's signature: sign again). Returns the key."""
    from veriml.models import sign_model, verify_model

    signing = load_private_key(key, passphrase=passphrase)
    signature = folder / "model.sig"
    if signature.exists():
        with tempfile.TemporaryDirectory(prefix="veriml-pub-") as tmp:
            pub = Path(tmp) / "publisher.pub"
            pub.write_bytes(signing.public.to_pem())
            try:
                verify_model(folder, pub)
            except VerificationError:
                pass
            else:
                return signing
    sign_model(folder, key, passphrase=passphrase)
    return signing
