"""The node's model cache: models pulled by digest from the hub, verified, kept loaded.

A pull (docs/node.md, "Model cache") is :func:`veriml.models.pull.pull_model`: the file list
and publisher key from the hub, paths confined, every blob hashed while streamed, the OMS
signature verified, the folder validated and its digest the job's, and only then renamed into
the cache. A failed pull leaves nothing in the cache. A cached folder is re-validated
(:func:`~veriml.models.pull.load_cached`) the first time this process uses it, so a cache that
changed on disk is refused, not trusted.

Loaded models are kept in memory, least recently used first out: ONNX runners (a session
each) and GGUF engines (:class:`~veriml.node._llm.LocalLLM`: the weights and a KV cache each,
so fewer of them, ``max_llm_loaded``). An evicted model reloads from the disk cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from veriml.core.digest import Digest
from veriml.core.errors import (
    FormatError,
    InvalidInputError,
    InvalidModelError,
    NodeUnavailableError,
    VerificationError,
)
from veriml.models.gguf import LLMPackage
from veriml.models.pull import PULL_TMP_PREFIX, Package, load_cached, pull_model
from veriml.node._llm import LocalLLM
from veriml.runtime import Profile, Runner, runner_for

_Loaded = TypeVar("_Loaded", Runner, LocalLLM)

if TYPE_CHECKING:
    from veriml.runtime.llm import LLMSettings

__all__ = ["ModelCache"]

log = logging.getLogger("veriml.node")


class ModelCache:
    """Loaded models (ONNX runners, GGUF engines) for cached models, pulling each model at most
    once at a time (a per-digest lock), off the event loop."""

    def __init__(
        self,
        cache_dir: Path,
        coordinator: str,
        *,
        max_bytes: int,
        profile: Profile | None = None,
        timeout: float = 600.0,
        max_loaded: int = 8,
        llm_settings: LLMSettings | None = None,
        max_llm_loaded: int = 2,
    ) -> None:
        self.cache_dir = cache_dir
        self.coordinator = coordinator
        self.max_bytes = max_bytes
        self.profile = profile if profile is not None else Profile()
        self.timeout = timeout
        self.pulls = 0
        """How many pulls from the hub this cache started (for health and tests)."""
        self.max_loaded = max_loaded
        self.llm_settings = llm_settings
        """The engine settings GGUF models load with (None: the engine's defaults)."""
        self.max_llm_loaded = max_llm_loaded
        # Least recently used first; a model pushed out stays on disk and reloads from there.
        self._runners: OrderedDict[Digest, Runner] = OrderedDict()
        self._engines: OrderedDict[Digest, LocalLLM] = OrderedDict()
        self._locks: dict[Digest, asyncio.Lock] = {}

    @property
    def loaded(self) -> list[str]:
        return sorted(d.to_text() for d in (*self._runners, *self._engines))

    def cached(self) -> list[str]:
        """Digests with a folder in the cache (loaded in this process or not)."""
        found = set(self.loaded)
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.cache_dir):
                if entry.is_dir() and not entry.name.startswith("."):
                    with contextlib.suppress(FormatError):
                        found.add(Digest.from_hex(entry.name).to_text())
        return sorted(found)

    def clean(self) -> None:
        """Remove pulls a previous run left half-done."""
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.cache_dir):
                if entry.name.startswith(PULL_TMP_PREFIX):
                    path = Path(entry.path)
                    if entry.is_dir():
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        path.unlink(missing_ok=True)

    def close(self) -> None:
        """Unload every model (at shutdown). An engine a job still holds is freed when the job
        ends; the disk cache stays."""
        self._runners.clear()
        self._engines.clear()

    async def runner(self, digest: Digest) -> Runner:
        """The ONNX runner for ``digest``: loaded, re-validated from the cache, or pulled.

        A GGUF model is :class:`InvalidInputError`: an ONNX job cannot run it."""
        return await self._get_as(
            digest, Runner, "the job's model is a GGUF language model, not an ONNX graph"
        )

    async def engine(self, digest: Digest) -> LocalLLM:
        """The loaded GGUF model ``digest`` (pulled and loaded on first use).

        An ONNX model is :class:`InvalidInputError`: an LLM job cannot run it."""
        return await self._get_as(
            digest, LocalLLM, "the job's model is an ONNX graph, not a GGUF language model"
        )

    async def _get_as(self, digest: Digest, kind: type[_Loaded], wrong: str) -> _Loaded:
        """The model ``digest`` loaded as ``kind``; :class:`InvalidInputError` ``wrong`` when
        it is the other kind."""
        loaded = await self._get(digest)
        if not isinstance(loaded, kind):
            raise InvalidInputError(wrong)
        return loaded

    async def _get(self, digest: Digest) -> Runner | LocalLLM:
        found = self._loaded(digest)
        if found is not None:
            return found
        lock = self._locks.setdefault(digest, asyncio.Lock())
        async with lock:
            found = self._loaded(digest)
            if found is None:
                found = await asyncio.to_thread(self._prepare, digest)
                if isinstance(found, LocalLLM):
                    self._keep(self._engines, digest, found, self.max_llm_loaded)
                else:
                    self._keep(self._runners, digest, found, self.max_loaded)
        return found

    def _loaded(self, digest: Digest) -> Runner | LocalLLM | None:
        for table in (self._runners, self._engines):
            found = table.get(digest)
            if found is not None:
                table.move_to_end(digest)
                return found
        return None

    @staticmethod
    def _keep(table: OrderedDict[Digest, Any], digest: Digest, value: Any, bound: int) -> None:
        # An evicted engine is freed once the jobs still holding it end (no explicit close:
        # one of them may be mid-generation).
        table[digest] = value
        while len(table) > bound:
            table.popitem(last=False)

    def _prepare(self, digest: Digest) -> Runner | LocalLLM:
        return self._load(self._package(digest))

    def _load(self, package: Package) -> Runner | LocalLLM:
        if isinstance(package, LLMPackage):
            from veriml.runtime.llm import LLMSettings

            settings = self.llm_settings if self.llm_settings is not None else LLMSettings()
            return LocalLLM(package, settings)
        return runner_for(package, self.profile)

    def _package(self, digest: Digest) -> Package:
        folder = self.cache_dir / digest.hex
        if folder.is_dir():
            try:
                return load_cached(folder, digest)
            except (InvalidModelError, VerificationError) as exc:
                log.warning("cached model %s is invalid, pulling again: %s", digest, exc)
                shutil.rmtree(folder, ignore_errors=True)
        self.pulls += 1
        log.info("pulling model %s from %s", digest, self.coordinator)
        with httpx.Client(timeout=httpx.Timeout(self.timeout, connect=10)) as client:
            try:
                return pull_model(
                    client, self.coordinator, digest, self.cache_dir, max_bytes=self.max_bytes
                )
            except httpx.HTTPError as exc:
                raise NodeUnavailableError(
                    "cannot pull the model from the hub", model=str(digest), reason=repr(exc)[:200]
                ) from exc
