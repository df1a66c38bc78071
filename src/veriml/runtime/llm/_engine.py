"""The LLM engine: llama.cpp evaluates, veriml samples, the node signs.

:class:`LLMEngine` wraps one ``llama_cpp.Llama`` (the model and its context) under pinned
:class:`LLMSettings` and drives it through llama.cpp's low-level batch API, so every decode is
the same sequence of calls on every node:

- **generation**: the memory is cleared, the prompt decoded in batches of ``n_batch`` (logits
  of the last position only), then one token per decode; each token is chosen by
  :func:`veriml.runtime.llm.sample` on the returned logits. No prefix cache: reusing a cached
  prefix would split the prompt differently and change the last bits of the logits.
- **prefill check**: :meth:`LLMEngine.all_logits` decodes prompt plus completion with logits
  for every position, which :func:`veriml.verify.prefill.check_completion` judges.
- **embeddings**: a second context on the same weights (mean pooling), created on first use,
  one input per decode so batch composition cannot change an input's vector.

One engine serves one call at a time (a lock guards the context).
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from veriml.core.canonical import canonical_digest
from veriml.core.completion import (
    CompletionPredicate,
    embedding_output_digest,
    prompt_digest,
    sampling_of,
    sign_completion,
    token_digest,
)
from veriml.core.digest import Digest
from veriml.core.errors import ExecutionError, FormatError, InvalidInputError, LimitExceededError
from veriml.core.keys import SigningKey
from veriml.core.timestamps import utc_now
from veriml.models.gguf import LLMPackage
from veriml.protocol.openai_requests import check_canonical
from veriml.runtime.llm._results import Completion, CompletionResult, GeneratedText, TokenEvent
from veriml.runtime.llm._settings import LLMSettings
from veriml.runtime.llm._template import ChatRenderer
from veriml.runtime.llm.sampler import sample

__all__ = ["VERIFY_CHUNK", "LLMEngine"]

# Completion tokens per batch in a verifying pass: below 64 rows llama.cpp's CPU matmuls give
# each row the same bits as a one-token decode (measured: 63 equal, 64 not; 32 leaves margin).
VERIFY_CHUNK = 32


_backend_ready = False
_backend_lock = threading.Lock()


def _llama_cpp() -> Any:
    """The llama_cpp module, imported on first use, with its backend initialised once and
    llama.cpp's log lines limited to errors (they go to stderr, not to veriml's logs)."""
    global _backend_ready
    try:
        import llama_cpp
    except ImportError as exc:  # pragma: no cover - the llm extra is part of dev
        raise ExecutionError(
            "llama-cpp-python is not installed; install veriml[llm]", reason=str(exc)
        ) from exc
    with _backend_lock:
        if not _backend_ready:
            log = logging.getLogger("llama-cpp-python")
            if log.level == logging.NOTSET:
                log.setLevel(logging.ERROR)
            llama_cpp.llama_backend_init()
            _backend_ready = True
    return llama_cpp


class LLMEngine:
    """A GGUF model loaded in llama.cpp (CPU, memory-mapped weights) under pinned settings.

    >>> engine = LLMEngine(LLMPackage.load(Path("smollm2")))  # doctest: +SKIP
    >>> canonical = canonical_request("chat.completion", engine.package.digest,
    ...     {"messages": [{"role": "user", "content": "Hi"}], "temperature": 0}, seed=1)
    >>> engine.generate(canonical).content  # doctest: +SKIP
    """

    def __init__(self, package: LLMPackage, settings: LLMSettings | None = None) -> None:
        lib = _llama_cpp()
        self.package = package
        self.settings = settings if settings is not None else LLMSettings()
        self._lib = lib
        self._lock = threading.Lock()
        self._closed = False
        self._embed_ctx: Any = None
        params = lib.llama_model_default_params()
        params.n_gpu_layers = 0
        params.use_mmap = True
        # No extra buffer types: weights stay in their GGUF layout instead of being repacked
        # for AMX/AVX-512 kernels that only some CPUs have (and whose AMX path crashes on
        # hosts that report AMX without granting it), so kernels vary less across nodes.
        params.use_extra_bufts = False
        self._model = lib.llama_model_load_from_file(str(package.gguf_path).encode(), params)
        if not self._model:
            raise ExecutionError("llama.cpp cannot load the model", path=str(package.gguf_path))
        self._ctx = lib.llama_init_from_model(self._model, self._context_params(embeddings=False))
        if not self._ctx:
            lib.llama_model_free(self._model)
            raise ExecutionError("llama.cpp cannot create a context", n_ctx=self.settings.n_ctx)
        self._vocab = lib.llama_model_get_vocab(self._model)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self._vocab))
        self._batch = lib.llama_batch_init(self.settings.n_batch, 0, 1)
        self._piece_buffer = ctypes.create_string_buffer(256)
        self._add_bos = bool(lib.llama_vocab_get_add_bos(self._vocab))
        self.eos_ids = frozenset(
            t for t in range(self.n_vocab) if lib.llama_vocab_is_eog(self._vocab, t)
        )
        bos_id, eos_id = (
            int(lib.llama_vocab_bos(self._vocab)),
            int(lib.llama_vocab_eos(self._vocab)),
        )
        self._bos_text = "" if bos_id < 0 else self._piece(bos_id, special=True).decode()
        eos_text = "" if eos_id < 0 else self._piece(eos_id, special=True).decode()
        template = package.chat_template
        self._chat = (
            None if template is None else ChatRenderer(template, bos=self._bos_text, eos=eos_text)
        )

    def _context_params(self, *, embeddings: bool) -> Any:
        lib, s = self._lib, self.settings
        params = lib.llama_context_default_params()
        params.n_ctx = s.n_ctx
        params.n_batch = params.n_ubatch = s.n_batch
        params.n_seq_max = 1
        params.n_threads = params.n_threads_batch = s.n_threads
        # Flash attention: each query row is computed on its own, the same way in a batch
        # as alone, which (with the schedule of all_logits) makes verification bitwise.
        params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED
        params.type_k = params.type_v = lib.GGML_TYPE_F16
        params.no_perf = True
        params.embeddings = embeddings
        if embeddings:
            params.pooling_type = lib.LLAMA_POOLING_TYPE_MEAN
        return params

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Free the llama.cpp batch, contexts and model (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._lib.llama_batch_free(self._batch)
        if self._embed_ctx is not None:
            self._lib.llama_free(self._embed_ctx)
            self._embed_ctx = None
        self._lib.llama_free(self._ctx)
        self._lib.llama_model_free(self._model)

    def __enter__(self) -> LLMEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fingerprint(self) -> dict[str, Any]:
        """The runtime fingerprint recorded in this engine's receipts."""
        return self.settings.fingerprint()

    # -- tokens --------------------------------------------------------------------------

    def _piece(self, token: int, *, special: bool = False) -> bytes:
        buf = self._piece_buffer
        n = int(self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special))
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = int(self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special))
        return buf.raw[:n]

    def _tokenize(self, text: str, *, special: bool) -> list[int]:
        """llama.cpp's tokenizer; ``special`` parses control-token text (chat templates)."""
        add_bos = self._add_bos and not (special and text.startswith(self._bos_text or "\0"))
        raw = text.encode("utf-8")
        size = len(raw) + 2  # at most one token per byte, plus BOS/EOS
        buf = (self._lib.llama_token * size)()
        n = int(self._lib.llama_tokenize(self._vocab, raw, len(raw), buf, size, add_bos, special))
        if n < 0:
            raise ExecutionError("llama.cpp cannot tokenize the text", needed=-n, bytes=len(raw))
        return list(buf[:n])

    def prompt_tokens(self, canonical: Mapping[str, Any]) -> list[int]:
        """The prompt token ids of a canonical request: the chat template rendered (with the
        template's control tokens parsed) or the prompt text (plain text only)."""
        kind = canonical.get("type")
        if kind == "chat.completion":
            if self._chat is None:
                raise InvalidInputError(
                    "the model has no chat template; use /v1/completions",
                    param="messages",
                    model=str(self.package.digest),
                )
            text = self._chat.render(
                canonical["messages"],
                tools=canonical.get("tools"),
                tool_choice=canonical.get("tool_choice"),
            )
            return self._tokenize(text, special=True)
        if kind == "text_completion":
            return self._tokenize(str(canonical["prompt"]), special=False)
        raise FormatError("not a completion request", param="type", kind=kind)

    def _check_model(self, canonical: Mapping[str, Any]) -> None:
        if canonical.get("model") != self.package.digest.to_text():
            raise InvalidInputError(
                "the request names another model",
                param="model",
                expected=self.package.digest.to_text(),
                got=canonical.get("model"),
            )

    def _check_room(self, prompt: Sequence[int], max_tokens: int, param: str) -> None:
        if not prompt:
            raise FormatError("the prompt has no tokens", param=param)
        if len(prompt) + max_tokens > self.settings.n_ctx:
            raise LimitExceededError(
                "prompt plus max_tokens exceeds the context",
                param=param if len(prompt) >= self.settings.n_ctx else "max_tokens",
                prompt_tokens=len(prompt),
                max_tokens=max_tokens,
                limit=self.settings.n_ctx,
            )

    # -- llama.cpp calls -----------------------------------------------------------------

    def _clear(self, ctx: Any) -> None:
        self._lib.llama_memory_clear(self._lib.llama_get_memory(ctx), True)

    def _decode(
        self,
        ctx: Any,
        tokens: Sequence[int],
        start: int,
        *,
        every: bool,
        sink: Callable[[int, int], None] | None = None,
    ) -> None:
        """Decode ``tokens`` at positions ``start..`` in batches of ``n_batch``; with
        ``every``, each position outputs (logits or embeddings), else only the last one.
        ``sink(first, count)`` is called after each batch to collect its outputs."""
        b = self._batch
        step = self.settings.n_batch
        for i in range(0, len(tokens), step):
            chunk = tokens[i : i + step]
            b.n_tokens = len(chunk)
            for j, token in enumerate(chunk):
                b.token[j] = token
                b.pos[j] = start + i + j
                b.n_seq_id[j] = 1
                b.seq_id[j][0] = 0
                b.logits[j] = every
            b.logits[len(chunk) - 1] = True
            code = int(self._lib.llama_decode(ctx, b))
            if code != 0:
                raise ExecutionError("llama_decode failed", code=code, position=start + i)
            if sink is not None:
                sink(i, len(chunk))

    def _last_logits(self) -> np.ndarray[Any, np.dtype[np.float32]]:
        pointer = self._lib.llama_get_logits_ith(self._ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))

    # -- public operations ---------------------------------------------------------------

    def generate(
        self,
        canonical: Mapping[str, Any],
        *,
        on_token: Callable[[TokenEvent], None] | None = None,
    ) -> Completion:
        """Generate the completion of a canonical request (docs/llm.md stop conditions).

        Raises :class:`LimitExceededError` before any decode when prompt plus ``max_tokens`` does
        not fit the context. ``on_token`` sees every token as it is chosen.
        """
        canonical = check_canonical(canonical)
        self._check_model(canonical)
        sampling = sampling_of(canonical)
        max_tokens = int(canonical["max_tokens"])
        prompt = self.prompt_tokens(canonical)
        param = "messages" if canonical["type"] == "chat.completion" else "prompt"
        self._check_room(prompt, max_tokens, param)
        text = GeneratedText(canonical["stop"], max_tokens)
        with self._lock:
            self._clear(self._ctx)
            self._decode(self._ctx, prompt, 0, every=False)
            for step in range(max_tokens):
                token = sample(self._last_logits(), sampling, step)
                piece = text.add(token, token in self.eos_ids, self._piece(token))
                if on_token is not None:
                    on_token(TokenEvent(token, piece))
                if text.finish is not None:
                    break
                self._decode(self._ctx, [token], len(prompt) + step, every=False)
        return text.completion(prompt)

    def pieces(self, tokens: Sequence[int]) -> list[bytes]:
        """The text bytes of each token (b"" for end-of-generation tokens)."""
        return [b"" if t in self.eos_ids else self._piece(t) for t in tokens]

    def completion_of(
        self, canonical: Mapping[str, Any], prompt: Sequence[int], tokens: Sequence[int]
    ) -> Completion:
        """The completion that ``tokens`` make under ``canonical``'s stop rules, without
        running the model: content, finish reason. A verifier recomputes the signed output
        digest from it. Tokens past the point where generation must have stopped are a
        :class:`FormatError`."""
        canonical = check_canonical(canonical)
        text = GeneratedText(canonical["stop"], int(canonical["max_tokens"]))
        for i, token in enumerate(tokens):
            if text.finish is not None:
                raise FormatError("tokens continue after the generation ended", index=i)
            if not 0 <= token < self.n_vocab:
                raise FormatError("a token id is outside the vocabulary", index=i)
            text.add(token, token in self.eos_ids, self._piece(token))
        if text.finish is None:
            raise FormatError("the tokens end before any stop condition", tokens=len(tokens))
        return text.completion(prompt)

    def all_logits(
        self, tokens: Sequence[int], *, prompt_count: int | None = None
    ) -> np.ndarray[Any, np.dtype[np.float32]]:
        """Logits for every position of ``tokens`` (``[len(tokens), n_vocab]``, float32),
        batched: what the prefill check judges.

        With ``prompt_count``, the first ``prompt_count`` tokens are decoded exactly as
        :meth:`generate` decodes a prompt and the rest in batches of :data:`VERIFY_CHUNK`;
        the rows that predict completion tokens are then bitwise equal to the logits the
        generator sampled from. Measured on llama.cpp 0.3.36 (CPU): matrix products switch
        kernels at 64 rows, and a Q4 model's 8-bit activation quantization turns that
        rounding change into logit differences of ~1, so one pass over prompt and completion
        together is not what the generator computed.
        """
        if not tokens:
            raise FormatError("no tokens to evaluate", param="tokens")
        if len(tokens) > self.settings.n_ctx:
            raise LimitExceededError(
                "tokens exceed the context",
                param="tokens",
                count=len(tokens),
                limit=self.settings.n_ctx,
            )
        if any(not 0 <= int(t) < self.n_vocab for t in tokens):
            raise InvalidInputError("a token id is outside the vocabulary", param="tokens")
        split = len(tokens) if prompt_count is None else prompt_count
        if not 1 <= split <= len(tokens):
            raise FormatError("prompt_count must be within the tokens", param="prompt_count")
        ids = [int(t) for t in tokens]
        out = np.empty((len(ids), self.n_vocab), dtype=np.float32)

        def collect(offset: int) -> Callable[[int, int], None]:
            def sink(first: int, count: int) -> None:
                pointer = self._lib.llama_get_logits(self._ctx)
                rows = np.ctypeslib.as_array(pointer, shape=(count, self.n_vocab))
                out[offset + first : offset + first + count] = rows

            return sink

        with self._lock:
            self._clear(self._ctx)
            self._decode(self._ctx, ids[:split], 0, every=True, sink=collect(0))
            for start in range(split, len(ids), VERIFY_CHUNK if prompt_count else len(ids)):
                chunk = ids[start : start + VERIFY_CHUNK] if prompt_count else ids[start:]
                self._decode(self._ctx, chunk, start, every=True, sink=collect(start))
            self._clear(self._ctx)
        return out

    def _embedding_context(self) -> Any:
        if self._embed_ctx is None:
            ctx = self._lib.llama_init_from_model(
                self._model, self._context_params(embeddings=True)
            )
            if not ctx:
                raise ExecutionError("llama.cpp cannot create an embedding context")
            self._embed_ctx = ctx
        return self._embed_ctx

    def embedding_tokens(self, canonical: Mapping[str, Any]) -> list[list[int]]:
        """The token ids of each input of a canonical embedding request."""
        return [self._tokenize(text, special=False) for text in canonical["input"]]

    def embed(self, canonical: Mapping[str, Any]) -> list[np.ndarray[Any, np.dtype[np.float32]]]:
        """Mean-pooled embeddings, one float32 vector per input, each from its own decode."""
        return self._embed(canonical)[1]

    def _embed(
        self, canonical: Mapping[str, Any]
    ) -> tuple[list[list[int]], list[np.ndarray[Any, np.dtype[np.float32]]]]:
        canonical = check_canonical(canonical)
        self._check_model(canonical)
        if canonical["type"] != "embedding":
            raise FormatError("not an embedding request", param="type")
        prompts = self.embedding_tokens(canonical)
        for i, ids in enumerate(prompts):
            if not ids:
                raise FormatError("an input has no tokens", param=f"input[{i}]")
            if len(ids) > self.settings.n_batch:
                raise LimitExceededError(
                    "an input exceeds the embedding batch",
                    param=f"input[{i}]",
                    tokens=len(ids),
                    limit=self.settings.n_batch,
                )
        n_embd = int(self._lib.llama_model_n_embd(self._model))
        vectors = []
        with self._lock:
            ctx = self._embedding_context()
            for ids in prompts:
                self._clear(ctx)
                self._decode(ctx, ids, 0, every=True)
                pointer = self._lib.llama_get_embeddings_seq(ctx, 0)
                if not pointer:
                    raise ExecutionError("llama.cpp returned no pooled embedding")
                vectors.append(np.ctypeslib.as_array(pointer, shape=(n_embd,)).copy())
        return prompts, vectors

    def run(
        self,
        canonical: Mapping[str, Any],
        *,
        key: SigningKey,
        request_id: str,
        policy: str,
        on_token: Callable[[TokenEvent], None] | None = None,
        spot: Digest | None = None,
    ) -> CompletionResult:
        """Generate (or embed) and sign: the node's whole job for one canonical request.
        ``spot`` is the job's spot-check commitment, repeated in the receipt."""
        started = utc_now()
        request_digest = canonical_digest(dict(canonical))
        common: dict[str, Any] = {
            "request_id": request_id,
            "request_digest": request_digest,
            "model_digest": self.package.digest,
            "model_files": self.package.files_digest,
            "runtime": self.fingerprint(),
            "node_id": key.key_id,
            "policy": policy,
            "trust": "reexecutable",
            "started": started,
            "spot": spot,
        }
        if canonical.get("type") == "embedding":
            prompts, vectors = self._embed(canonical)
            output = embedding_output_digest(vectors)
            predicate = CompletionPredicate(
                **common,
                prompt_count=sum(len(p) for p in prompts),
                prompt_digest=prompt_digest(prompts),
                completion_count=0,
                finish_reason="stop",
                sampling=None,
                finished=utc_now(),
            )
            return CompletionResult(
                receipt=sign_completion(output, predicate, key),
                predicate=predicate,
                output_digest=output,
                embeddings=tuple(vectors),
                embedding_prompts=tuple(tuple(p) for p in prompts),
            )
        completion = self.generate(canonical, on_token=on_token)
        output = completion.output_digest()
        predicate = CompletionPredicate(
            **common,
            prompt_count=len(completion.prompt_tokens),
            prompt_digest=token_digest(completion.prompt_tokens),
            completion_count=len(completion.tokens),
            finish_reason=completion.finish_reason,
            sampling=sampling_of(canonical),
            finished=utc_now(),
        )
        return CompletionResult(
            receipt=sign_completion(output, predicate, key),
            predicate=predicate,
            output_digest=output,
            completion=completion,
        )
