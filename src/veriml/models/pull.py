"""Pull a model by digest from a coordinator's hub, verify it, and keep it in a cache folder.

Nodes pull the models their jobs name (:class:`veriml.node` keeps them loaded), and the SDK's
watcher pulls the models it re-executes; both go through :func:`pull_model` (docs/node.md,
"Model cache"), every step failing closed:

1. ``GET /v1/models/{digest}``: the file list (``[{path, digest, size}]``), the publisher's
   public key and the digest of the OMS signature bundle (``model.sig``);
2. every path must stay inside the folder, and the sizes must fit the caller's limit;
3. each file is streamed from ``GET /v1/blobs/{digest}`` into a temporary folder, its SHA-256
   checked while writing and its length bounded by the size the hub stated;
4. the OMS signature verifies with :func:`veriml.models.verify_model` and the recorded key;
5. :func:`~veriml.models.package.load_package` validates the folder (an ONNX graph or a GGUF
   language model, docs/llm.md) and its digest must be the job's;
6. only then is the folder renamed (atomically) to ``<cache>/<digest-hex>/``.

A failed pull leaves nothing in the cache. :func:`load_cached` re-validates a cached folder
(step 5), so a cache that changed on disk is refused, not trusted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import httpx

from veriml.core.canonical import parse_json_object
from veriml.core.digest import Digest
from veriml.core.errors import (
    Check,
    DigestMismatchError,
    FormatError,
    InvalidModelError,
    NodeUnavailableError,
    NotFoundError,
    StorageError,
)
from veriml.core.keys import VerifyingKey
from veriml.models.digest import DEFAULT_SIGNATURE_NAME, Progress
from veriml.models.gguf import LLMPackage
from veriml.models.package import ModelPackage, load_package
from veriml.models.signing import verify_model

__all__ = [
    "PULL_TMP_PREFIX",
    "HubFile",
    "HubModel",
    "Package",
    "load_cached",
    "pull_model",
    "safe_relative",
]

Package = ModelPackage | LLMPackage

CHUNK = 1 << 20
MAX_MODEL_JSON = 16 << 20
MAX_FILES = 100_000
MAX_SIGNATURE_BYTES = 64 << 20
PULL_TMP_PREFIX = ".pull-"
"""The name prefix of a pull in progress in the cache folder (what a restart may clean up)."""


@dataclass(frozen=True, slots=True)
class HubFile:
    path: str
    digest: Digest
    size: int


@dataclass(frozen=True, slots=True)
class HubModel:
    """What the hub says about a model: its files, publisher key and signature blob."""

    digest: Digest
    files: tuple[HubFile, ...]
    publisher_key: VerifyingKey
    signature: Digest

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> HubModel:
        """Parse ``GET /v1/models/{digest}`` (docs/network.md, "Coordinator HTTP API")."""
        try:
            raw_files = obj.get("files", obj.get("manifest"))
            publisher = obj.get("publisher")
            pem = publisher.get("public_key") if isinstance(publisher, Mapping) else None
            pem = pem if pem is not None else obj.get("publisher_key")
            if not isinstance(raw_files, list) or len(raw_files) > MAX_FILES:
                raise FormatError("model files must be a list", got=type(raw_files).__name__)
            if not isinstance(pem, str):
                raise FormatError("model has no publisher public key")
            files = []
            for item in raw_files:
                size = item["size"]
                if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                    raise FormatError("file size must be a non-negative integer", got=size)
                files.append(HubFile(str(item["path"]), Digest.from_text(item["digest"]), size))
            return cls(
                digest=Digest.from_text(obj["digest"]),
                files=tuple(files),
                publisher_key=VerifyingKey.from_pem(pem.encode()),
                signature=Digest.from_text(obj["signature"]),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise FormatError("hub model record is malformed", reason=repr(exc)[:200]) from exc


def safe_relative(name: str) -> PurePosixPath:
    """A manifest path as a relative path that cannot leave its folder."""
    rel = PurePosixPath(name)
    if (
        not name
        or rel.is_absolute()
        or not rel.parts
        or any(p in ("", ".", "..") for p in rel.parts)
        or "\\" in name
        or "\x00" in name
        or name != rel.as_posix()
    ):
        raise InvalidModelError("manifest path escapes the model folder", path=name[:200])
    if rel.as_posix() == DEFAULT_SIGNATURE_NAME:
        raise InvalidModelError("manifest lists the signature file as a model file", path=name)
    return rel


def _fetch_json(client: httpx.Client, url: str, what: str) -> dict[str, Any]:
    with client.stream("GET", url) as response:
        _raise_for_status(response, url, what)
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > MAX_MODEL_JSON:
                raise NodeUnavailableError(
                    f"the hub's {what} record is too large", url=url, limit=MAX_MODEL_JSON
                )
    return parse_json_object(bytes(body), what=what)


def _raise_for_status(response: httpx.Response, url: str, what: str) -> None:
    if response.status_code == 404 and what == "model":
        raise NotFoundError("the hub has no such model", url=url)
    if response.status_code != 200:
        raise NodeUnavailableError(
            f"the hub did not serve the {what}", url=url, hub_status=response.status_code
        )


def _download(
    client: httpx.Client,
    base: str,
    digest: Digest,
    target: Path,
    *,
    size: int | None,
    limit: int,
    received: Callable[[int], None] | None = None,
) -> None:
    """Stream one blob to ``target``, hashing while writing; never more than ``size`` (when
    the hub stated it) or ``limit`` bytes. ``received`` is told each chunk's length."""
    url = f"{base}/v1/blobs/{digest.to_text()}"
    bound = limit if size is None else min(size, limit)
    h = hashlib.sha256()
    written = 0
    with client.stream("GET", url) as response, target.open("xb") as out:
        _raise_for_status(response, url, "blob")
        for chunk in response.iter_raw(CHUNK):
            written += len(chunk)
            if written > bound:
                raise DigestMismatchError(
                    "blob is longer than the hub said",
                    check=Check.BLOB_SIZE,
                    expected=bound,
                    calculated=f">{bound}",
                )
            h.update(chunk)
            out.write(chunk)
            if received is not None:
                received(len(chunk))
    calculated = Digest(h.digest())
    if calculated != digest or (size is not None and written != size):
        raise DigestMismatchError(
            f"blob {digest} does not match its digest",
            check=Check.BLOB_DIGEST,
            expected=digest,
            calculated=calculated,
        )


def pull_model(
    client: httpx.Client,
    coordinator: str,
    digest: Digest,
    cache_dir: Path,
    *,
    max_bytes: int,
    progress: Progress | None = None,
) -> Package:
    """Pull ``digest`` into ``cache_dir/<hex>`` (steps 1-6 above); return the loaded package.

    ``progress`` is told ``(bytes received, total)`` as the blobs arrive, the total being the
    size of the files the hub lists (the signature's few bytes beyond it are not counted past
    the total). Blocking (network and disk): call it off the event loop.
    """
    url = f"{coordinator}/v1/models/{digest.to_text()}"
    hub = HubModel.from_json(_fetch_json(client, url, "model"))  # 1
    if hub.digest != digest:
        raise DigestMismatchError(
            "hub answered for another model",
            check=Check.MODEL_DIGEST,
            expected=digest,
            calculated=hub.digest,
        )
    paths = [safe_relative(f.path) for f in hub.files]  # 2
    if len(set(paths)) != len(paths):
        raise InvalidModelError("manifest lists a path twice", model=str(digest))
    if hub.size > max_bytes:
        raise StorageError("model is larger than this node accepts", size=hub.size, limit=max_bytes)
    received = None if progress is None else _Received(hub.size, progress)
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / digest.hex
    tmp = cache_dir / f"{PULL_TMP_PREFIX}{digest.hex}-{uuid.uuid4().hex[:8]}"
    pub = tmp.with_name(tmp.name + ".pub")
    try:
        try:
            tmp.mkdir()
            for rel, item in zip(paths, hub.files, strict=True):  # 3
                target = tmp.joinpath(*rel.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                _download(
                    client,
                    coordinator,
                    item.digest,
                    target,
                    size=item.size,
                    limit=max_bytes,
                    received=received,
                )
            _download(
                client,
                coordinator,
                hub.signature,
                tmp / DEFAULT_SIGNATURE_NAME,
                size=None,
                limit=MAX_SIGNATURE_BYTES,
                received=received,
            )
            pub.write_bytes(hub.publisher_key.to_pem())
        except OSError as exc:  # colliding paths ("a" and "a/b"), a full disk
            raise StorageError(
                "cannot write the pulled model", model=str(digest), reason=str(exc)[:200]
            ) from exc
        verified = verify_model(tmp, pub)  # 4
        package = load_package(tmp)  # 5
        for claimed in (verified, package.digest):
            if claimed != digest:
                raise DigestMismatchError(
                    "pulled model is not the one the job names",
                    check=Check.MODEL_DIGEST,
                    expected=digest,
                    calculated=claimed,
                )
        try:
            tmp.rename(final)  # 6
        except OSError:
            if not final.is_dir():  # another process won the race with the same model
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            return load_cached(final, digest)
        return _moved(package, tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            pub.unlink()


class _Received:
    """Counts a pull's bytes for ``progress``, never past the stated total."""

    def __init__(self, total: int, progress: Progress) -> None:
        self._total = total
        self._done = 0
        self._progress = progress

    def __call__(self, count: int) -> None:
        self._done = min(self._done + count, self._total)
        self._progress(self._done, self._total)


def _moved(package: Package, old: Path, new: Path) -> Package:
    if isinstance(package, LLMPackage):
        return dataclasses.replace(
            package, path=new, gguf_path=new / package.gguf_path.relative_to(old)
        )
    return dataclasses.replace(
        package, path=new, onnx_path=new / package.onnx_path.relative_to(old)
    )


def load_cached(folder: Path, digest: Digest) -> Package:
    """Re-validate a cached folder; refuse it unless its digest is still its name."""
    package = load_package(folder)
    if package.digest != digest:
        raise DigestMismatchError(
            "cached model changed on disk",
            check=Check.CACHE,
            expected=digest,
            calculated=package.digest,
        )
    return package
