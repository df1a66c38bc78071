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
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from veriml.core.errors import InvalidModelError, VerificationError
from veriml.core.keys import SigningKey, load_private_key

__all__ = [
    "CHUNK",
    "Progress",
    "counted",
    "ensure_signed",
    "model_files",
    "publisher_header",
    "tar_size",
    "tar_stream",
]

CHUNK = 1 << 20
_BLOCK = tarfile.BLOCKSIZE
Progress = Callable[[int, int | None], None]
"""A progress callback: the bytes done so far and the total (None when unknown)."""


def model_files(folder: Path) -> list[tuple[str, Path]]:
    """Every regular file under ``folder`` as (relative POSIX path, path), sorted by name."""
    if not folder.is_dir():
        raise InvalidModelError("a model is a folder", path=str(folder))
    files: list[tuple[str, Path]] = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            path = Path(root) / name
            if path.is_symlink() or not path.is_file():
                raise InvalidModelError("model folders hold regular files only", path=str(path))
            files.append((path.relative_to(folder).as_posix(), path))
    return sorted(files)


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    return info.tobuf(format=tarfile.PAX_FORMAT)


def _padding(size: int) -> int:
    return -size % _BLOCK


def tar_stream(folder: Path, *, chunk: int = CHUNK) -> Iterator[bytes]:
    """The folder as an uncompressed tar stream, produced lazily."""
    for name, path in model_files(folder):
        size = path.stat().st_size
        yield _header(name, size)
        written = 0
        with path.open("rb") as f:
            while written < size:
                data = f.read(min(chunk, size - written))
                if not data:
                    raise InvalidModelError("model file shrank while uploading", path=str(path))
                written += len(data)
                yield data
        if _padding(size):
            yield b"\0" * _padding(size)
    yield b"\0" * (2 * _BLOCK)


def tar_size(folder: Path) -> int:
    """The length of :func:`tar_stream` of ``folder``, from the files' sizes (nothing read)."""
    total = 2 * _BLOCK
    for name, path in model_files(folder):
        size = path.stat().st_size
        total += len(_header(name, size)) + size + _padding(size)
    return total


def counted(chunks: Iterable[bytes], total: int | None, progress: Progress) -> Iterator[bytes]:
    """``chunks`` passed on, telling ``progress`` the bytes done (after each chunk has been
    taken) and ``total``; it is told ``(0, total)`` first."""
    done = 0
    progress(done, total)
    for chunk in chunks:
        yield chunk
        done += len(chunk)
        progress(done, total)


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
