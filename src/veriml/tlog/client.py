"""A read client for a tiled transparency log, over HTTP or any fsspec URL.

It trusts nothing the log serves until it has checked it: the checkpoint against the log key
(and optionally a quorum of witness cosignatures), every tile against the checkpoint's root
(through :class:`~veriml.tlog.tiles.TileHashReader`), every entry against its leaf hash. Proofs
are computed from tiles here, never taken from the server
(https://c2sp.org/tlog-tiles, https://c2sp.org/tlog-proof).

    client = LogClient("https://log.example/", log_verifier)
    signed = client.checkpoint()
    proof = client.prove(42, signed)          # a c2sp.org/tlog-proof@v1 file
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol

import fsspec  # type: ignore[import-untyped,unused-ignore]
import httpx

from veriml.core.errors import (
    Check,
    FormatError,
    NodeUnavailableError,
    NotFoundError,
    SignatureError,
    VerificationError,
)
from veriml.tlog.checkpoint import Checkpoint, open_checkpoint
from veriml.tlog.cosignature import CosignatureVerifier
from veriml.tlog.merkle import HASH_SIZE, leaf_hash, verify_consistency, verify_inclusion
from veriml.tlog.note import Note, NoteVerifier
from veriml.tlog.proof import TlogProof
from veriml.tlog.tiles import (
    TILE_WIDTH,
    TileHashReader,
    TilePath,
    decode_entry_bundle,
    encode_entry_bundle,
)

__all__ = [
    "MAX_CHECKPOINT_BYTES",
    "MAX_ENTRY_BYTES",
    "FsspecSource",
    "HttpSource",
    "LogClient",
    "SignedCheckpoint",
    "TileSource",
    "open_source",
    "verify_checkpoint_note",
]

MAX_CHECKPOINT_BYTES = 1 << 20
MAX_ENTRY_BYTES = 0xFFFF
_CHUNK = 1 << 16


class TileSource(Protocol):
    """Where a log's static resources live. ``read`` returns at most ``limit`` bytes or raises."""

    def read(self, path: str, *, limit: int) -> bytes: ...


class HttpSource:
    """Resources under an HTTP(S) prefix, with keep-alive and bounded response sizes."""

    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self._local = threading.local()
        self._timeout = timeout
        self._lock = threading.Lock()
        self._clients: list[httpx.Client] = []

    def _client(self) -> httpx.Client:
        # httpx.Client is not safe to share across threads; the audit prefetches in a pool.
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = httpx.Client(timeout=self._timeout, headers={"User-Agent": "veriml"})
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def close(self) -> None:
        """Close the keep-alive connections of every thread that used this source."""
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()

    def read(self, path: str, *, limit: int) -> bytes:
        url = self.base_url + path
        try:
            with self._client().stream("GET", url) as response:
                if response.status_code == 404:
                    raise NotFoundError("log resource not found", url=url)
                if response.status_code != 200:
                    raise NodeUnavailableError(
                        "log resource not served", url=url, status=response.status_code
                    )
                chunks: list[bytes] = []
                total = 0
                for chunk in response.iter_bytes():
                    total += len(chunk)
                    if total > limit:
                        raise FormatError("log resource is too large", url=url, limit=limit)
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.HTTPError as exc:
            raise NodeUnavailableError("log unreachable", url=url, reason=str(exc)) from exc


class FsspecSource:
    """Resources under any fsspec URL (``file://``, ``s3://``, ``memory://``, a plain path)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/") + "/"

    def read(self, path: str, *, limit: int) -> bytes:
        url = self.base_url + path
        try:
            with fsspec.open(url, "rb") as f:
                data = _read_capped(f, limit)
        except FileNotFoundError as exc:
            raise NotFoundError("log resource not found", url=url) from exc
        except OSError as exc:
            raise NodeUnavailableError(
                "cannot read log resource", url=url, reason=str(exc)
            ) from exc
        if len(data) > limit:
            raise FormatError("log resource is too large", url=url, limit=limit)
        return data


def _read_capped(f: BinaryIO, limit: int) -> bytes:
    # read(n) allocates n bytes up front; the limit is a worst case (16 MiB for a bundle),
    # so read in chunks and stop one byte past the limit.
    chunks: list[bytes] = []
    total = 0
    while total <= limit:
        chunk = f.read(min(_CHUNK, limit + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def open_source(url: str | TileSource) -> TileSource:
    """An :class:`HttpSource` for ``http(s)://`` URLs, an :class:`FsspecSource` otherwise."""
    if not isinstance(url, str):
        return url
    if url.startswith(("http://", "https://")):
        return HttpSource(url)
    return FsspecSource(url)


@dataclass(frozen=True, slots=True)
class SignedCheckpoint:
    """A checkpoint whose log signature (and witness quorum, if asked) has been verified.

    ``note`` is the signed note exactly as served; ``witnesses`` names the cosigners that were
    checked and valid. ``signature_checked`` is ``False`` only for a :class:`LogClient` made
    without a log key (its proofs are still checked against the checkpoint's root).
    """

    checkpoint: Checkpoint
    note: bytes
    witnesses: tuple[str, ...] = ()
    signature_checked: bool = True


def verify_checkpoint_note(
    note: bytes,
    log: NoteVerifier,
    *,
    witnesses: Sequence[CosignatureVerifier] = (),
    quorum: int = 0,
) -> SignedCheckpoint:
    """Check a checkpoint note against the log key and a k-of-n witness policy.

    The note must be signed by ``log``, its origin must be the log key's name, and at least
    ``quorum`` of ``witnesses`` must have cosigned it (https://c2sp.org/tlog-policy).
    Raises :class:`SignatureError` otherwise.
    """
    if quorum > len(witnesses):
        raise SignatureError(
            "quorum is larger than the number of witnesses", quorum=quorum, witnesses=len(witnesses)
        )
    # 1. The log signed it, its origin is the log key's name, and every known witness's
    #    cosignature that is present verifies (a bad one rejects the note).
    checkpoint, opened = open_checkpoint(note, log, others=witnesses, origin=log.name)
    # 2. Enough witnesses cosigned to meet the quorum.
    trusted = {(w.name, w.key_hash) for w in witnesses}
    valid = tuple(s.name for s in opened.verified if (s.name, s.key_hash) in trusted)
    if len(valid) < quorum:
        raise SignatureError(
            "too few witness cosignatures",
            check=Check.WITNESS_QUORUM,
            quorum=quorum,
            valid=len(valid),
            cosigners=",".join(valid),
        )
    return SignedCheckpoint(checkpoint, note, valid)


class LogClient:
    """Reads and verifies a tiled log. Every method that returns data has checked it."""

    def __init__(
        self,
        source: str | TileSource,
        log: NoteVerifier | None,
        *,
        witnesses: Sequence[CosignatureVerifier] = (),
        quorum: int = 0,
    ) -> None:
        self.source = open_source(source)
        self._owns_source = isinstance(source, str)
        self.log = log
        self.witnesses = tuple(witnesses)
        self.quorum = quorum

    def close(self) -> None:
        """Release the source's connections, if this client opened it."""
        if self._owns_source and isinstance(self.source, HttpSource):
            self.source.close()

    def __enter__(self) -> LogClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def checkpoint(self) -> SignedCheckpoint:
        """Fetch ``checkpoint`` and verify it against the log key and the witness policy.

        Without a log key the note is only parsed: use that for tools that check the
        signature later (``veriml log prove`` writes a proof that ``verify-proof`` checks).
        """
        data = self.source.read("checkpoint", limit=MAX_CHECKPOINT_BYTES)
        if self.log is None:
            cp = Checkpoint.from_text(Note.from_bytes(data).text)
            return SignedCheckpoint(cp, data, (), signature_checked=False)
        return verify_checkpoint_note(data, self.log, witnesses=self.witnesses, quorum=self.quorum)

    def read_tile(self, path: TilePath) -> bytes:
        """A hash tile of exactly its width (unauthenticated; see :meth:`hash_reader`).

        A partial tile may be gone once its full tile exists (c2sp.org/tlog-tiles); then the
        full tile's prefix is the same hashes.
        """
        want = path.width * HASH_SIZE
        try:
            data = self.source.read(path.to_path(), limit=want)
        except NotFoundError:
            if path.width == TILE_WIDTH:
                raise
            full = TilePath(path.level, path.index)
            data = self.source.read(full.to_path(), limit=TILE_WIDTH * HASH_SIZE)[:want]
        if len(data) != want:
            raise FormatError("tile has the wrong length", tile=path.to_path(), length=len(data))
        return data

    def read_bundle_bytes(self, path: TilePath) -> bytes:
        """An entry bundle's bytes (unauthenticated: check them against a tile). A missing
        partial bundle is cut from the full one, as for tiles."""
        limit = path.width * (2 + MAX_ENTRY_BYTES)
        try:
            return self.source.read(path.to_path(), limit=limit)
        except NotFoundError:
            if path.width == TILE_WIDTH:
                raise
        full = TilePath("entries", path.index)
        data = self.source.read(full.to_path(), limit=TILE_WIDTH * (2 + MAX_ENTRY_BYTES))
        return encode_entry_bundle(decode_entry_bundle(data, TILE_WIDTH)[: path.width])

    def read_bundle(self, path: TilePath) -> list[bytes]:
        """The entries of one entry bundle (unauthenticated: check them against a tile)."""
        return decode_entry_bundle(self.read_bundle_bytes(path), path.width)

    def _fetch(self, path: TilePath) -> bytes:
        return self.read_bundle_bytes(path) if path.is_entries else self.read_tile(path)

    def hash_reader(self, signed: SignedCheckpoint) -> TileHashReader:
        """Node hashes and entries of ``signed``'s tree, each tile authenticated against its
        root before use."""
        cp = signed.checkpoint
        return TileHashReader(cp.size, cp.root_hash, self._fetch)

    def inclusion_proof(self, index: int, signed: SignedCheckpoint) -> list[bytes]:
        """The inclusion proof of entry ``index`` in ``signed``'s tree, computed from tiles."""
        cp = signed.checkpoint
        if not 0 <= index < cp.size:
            raise FormatError("index is outside the tree", index=index, size=cp.size)
        return self.hash_reader(signed).inclusion_proof(index)

    def consistency_proof(self, old_size: int, signed: SignedCheckpoint) -> list[bytes]:
        """The consistency proof from ``old_size`` to ``signed``'s size, computed from tiles."""
        cp = signed.checkpoint
        if not 0 < old_size <= cp.size:
            raise FormatError("old size is outside the tree", old_size=old_size, size=cp.size)
        return self.hash_reader(signed).consistency_proof(old_size)

    def entry(self, index: int, signed: SignedCheckpoint) -> tuple[bytes, list[bytes]]:
        """Entry ``index`` and its inclusion proof, both verified against ``signed``."""
        cp = signed.checkpoint
        if not 0 <= index < cp.size:
            raise FormatError("index is outside the tree", index=index, size=cp.size)
        reader = self.hash_reader(signed)
        bundle_index, offset = divmod(index, TILE_WIDTH)
        entry = reader.read_entry_bundle(bundle_index)[offset]
        proof = reader.inclusion_proof(index)
        verify_inclusion(leaf_hash(entry), index, cp.size, proof, cp.root_hash)
        return entry, proof

    def verify_consistent(self, old: Checkpoint, signed: SignedCheckpoint) -> None:
        """Raise :class:`VerificationError` unless ``old`` is a prefix of ``signed``'s tree."""
        new = signed.checkpoint
        if old.origin != new.origin:
            raise VerificationError("checkpoints of different logs", old=old.origin, new=new.origin)
        if old.size == 0:
            return
        proof = self.consistency_proof(old.size, signed) if old.size < new.size else []
        verify_consistency(old.size, new.size, proof, old.root_hash, new.root_hash)

    def prove(
        self, index: int, signed: SignedCheckpoint | None = None, *, extra: bytes | None = None
    ) -> TlogProof:
        """A c2sp.org/tlog-proof for entry ``index``, checked before it is returned.

        ``extra`` defaults to the entry itself (veriml's convention, so the proof file is
        self-contained; the inclusion proof authenticates it).
        """
        signed = signed or self.checkpoint()
        entry, proof = self.entry(index, signed)
        if extra is None and entry:
            extra = entry
        return TlogProof(index=index, proof=tuple(proof), checkpoint=signed.note, extra=extra)
