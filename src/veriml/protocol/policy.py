"""Verification policies, spot-check commitments and verdicts: the formats (pure, no I/O).

The formats are fixed in ``docs/verification.md`` ("Policies", "Spot checks", "Verdicts"):

- ``none``: one node answers; the verdict accepts its verified receipt.
- ``quorum:N/K`` (1 <= K <= N <= 16): N nodes of distinct operators answer; the verdict
  accepts the outputs that at least K of them agree on.
- ``spot:P`` (0 < P <= 1, at most 4 decimals): one node answers; with probability P a node of
  another operator re-executes, decided by a commit-reveal the node cannot predict.
- ``optimistic:W`` (1 s <= W <= 7 d): one traced node answers; final after W unless challenged.
- ``prefill`` (LLM completions, docs/llm.md): one node generates; a node of another operator
  checks every generated token in one batched pass and signs its report.

Each may end in ``,tolerance`` (agreement within per-operator error bounds, see
:mod:`veriml.verify.tolerance`) or ``,bitwise`` (the default, omitted from the canonical text).

These are wire formats shared by the coordinator (which draws spot checks and logs verdicts),
the nodes (which sign spot commitments), the ledger (whose inference entries carry verdicts)
and the SDK. What a verdict *should* be, and whether a claimed one holds, is decided in
:mod:`veriml.verify.policy` (:func:`~veriml.verify.policy.decide`,
:func:`~veriml.verify.policy.check_verdict`), which re-exports every name here.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Final, Literal

from veriml.core.digest import Digest
from veriml.core.errors import FormatError
from veriml.protocol.draw import Draw

if TYPE_CHECKING:
    pass

__all__ = [
    "BASIS_POINTS",
    "COMPARES",
    "MAX_QUORUM",
    "MAX_WINDOW",
    "SPOT_COMMIT_TAG",
    "SPOT_DECIDE_TAG",
    "SPOT_SECRET_SIZE",
    "WINNERS",
    "Compare",
    "DisputeRef",
    "Outcome",
    "Policy",
    "PolicyKind",
    "SpotReveal",
    "Verdict",
    "Winner",
    "spot_checked",
    "spot_commitment",
]

MAX_QUORUM: Final = 16
BASIS_POINTS: Final = 10_000
MAX_WINDOW: Final = 7 * 86_400
SPOT_SECRET_SIZE: Final = 32
SPOT_COMMIT_TAG: Final = b"veriml-spot-commit/v1\n"
SPOT_DECIDE_TAG: Final = b"veriml-spot/v2\n"
_MAX_POLICY_TEXT: Final = 64

Outcome = Literal["accepted", "rejected"]
Compare = Literal["bitwise", "tolerance"]
PolicyKind = Literal["none", "quorum", "spot", "optimistic", "prefill"]
Winner = Literal["defendant", "challenger", "none", "neither"]
WINNERS: Final[tuple[Winner, ...]] = ("defendant", "challenger", "none", "neither")
COMPARES: Final[tuple[Compare, ...]] = ("bitwise", "tolerance")

# Units of an optimistic window, largest first: the canonical text uses the largest that divides.
_UNITS: Final[tuple[tuple[str, int], ...]] = (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1))
_QUORUM = re.compile(r"quorum:([0-9]{1,2})/([0-9]{1,2})")
_SPOT = re.compile(r"spot:([0-9])(?:\.([0-9]+))?")
_WINDOW = re.compile(r"optimistic:([0-9]{1,7})([smhd])")


@dataclass(frozen=True, slots=True)
class Policy:
    """A parsed policy. ``str(policy)`` is its canonical text.

    >>> str(Policy.parse("spot:0.10,bitwise"))
    'spot:0.1'
    >>> Policy.parse("optimistic:120m").window
    7200
    """

    kind: PolicyKind
    n: int = 1
    k: int = 1
    p_bp: int = 0
    """Spot-check probability in basis points (1/10000), 1..10000; 0 for other kinds."""
    window: int = 0
    """Optimistic challenge window in seconds, 1..604800; 0 for other kinds."""
    compare: Compare = "bitwise"

    def __post_init__(self) -> None:
        if self.compare not in COMPARES:
            raise FormatError("policy comparison must be bitwise or tolerance", got=self.compare)
        if self.kind == "quorum":
            if not 1 <= self.k <= self.n <= MAX_QUORUM:
                raise FormatError(
                    "quorum:N/K needs 1 <= K <= N <= 16", policy=f"quorum:{self.n}/{self.k}"
                )
        elif self.kind in ("none", "spot", "optimistic", "prefill"):
            if (self.n, self.k) != (1, 1):
                raise FormatError(f"policy {self.kind} runs exactly one node first")
        else:
            raise FormatError("unknown policy kind", got=self.kind)
        if (self.kind == "spot") != (self.p_bp != 0) or not 0 <= self.p_bp <= BASIS_POINTS:
            raise FormatError(
                "a spot probability (1..10000 basis points) belongs to spot:P only",
                kind=self.kind,
                p_bp=self.p_bp,
            )
        if (self.kind == "optimistic") != (self.window != 0) or not 0 <= self.window <= MAX_WINDOW:
            raise FormatError(
                "a window (1 s to 7 d) belongs to optimistic:W only",
                kind=self.kind,
                window=self.window,
            )

    @classmethod
    def parse(cls, text: str) -> Policy:
        """Parse ``base[,compare]``; :class:`FormatError` names what is wrong."""
        if not isinstance(text, str) or len(text) > _MAX_POLICY_TEXT:
            raise FormatError("a policy is a short text", got=str(text)[:_MAX_POLICY_TEXT])
        base, sep, compare_text = text.partition(",")
        compare: Compare = "bitwise"
        if sep:
            if compare_text not in COMPARES:
                raise FormatError(
                    "policy comparison must be bitwise or tolerance", got=compare_text[:32]
                )
            compare = compare_text
        if base == "none":
            return cls("none", compare=compare)
        if base == "prefill":
            if compare != "bitwise":
                raise FormatError(
                    "a prefill check accepts tokens, it compares no tensors", got=text
                )
            return cls("prefill")
        if match := _QUORUM.fullmatch(base):
            return cls("quorum", int(match[1]), int(match[2]), compare=compare)
        if match := _SPOT.fullmatch(base):
            return cls("spot", p_bp=_basis_points(match[1], match[2] or "", base), compare=compare)
        if match := _WINDOW.fullmatch(base):
            seconds = int(match[1]) * dict(_UNITS)[match[2]]
            if not 1 <= seconds <= MAX_WINDOW:
                raise FormatError("optimistic window must be 1s..7d", got=base)
            return cls("optimistic", window=seconds, compare=compare)
        raise FormatError(
            "policy must be none, quorum:N/K, spot:P, optimistic:W or prefill, optionally "
            "followed by ,bitwise or ,tolerance",
            got=text,
        )

    @property
    def nodes(self) -> int:
        """How many nodes (of distinct operators) are asked first."""
        return self.n if self.kind == "quorum" else 1

    @property
    def needed(self) -> int:
        """How many distinct operators must agree."""
        return self.k if self.kind == "quorum" else 1

    @property
    def probability(self) -> Fraction:
        """The spot-check probability P (0 for other kinds)."""
        return Fraction(self.p_bp, BASIS_POINTS)

    def __str__(self) -> str:
        if self.kind == "quorum":
            base = f"quorum:{self.n}/{self.k}"
        elif self.kind == "spot":
            base = "spot:" + _decimal(self.p_bp)
        elif self.kind == "optimistic":
            unit, size = next((u, s) for u, s in _UNITS if self.window % s == 0)
            base = f"optimistic:{self.window // size}{unit}"
        else:
            base = self.kind  # none, prefill
        return base if self.compare == "bitwise" else f"{base},{self.compare}"


def _basis_points(whole: str, decimals: str, text: str) -> int:
    if len(decimals) > 4:
        raise FormatError("spot probability has at most 4 decimals", got=text)
    p_bp = int(whole) * BASIS_POINTS + int(decimals.ljust(4, "0") or "0")
    if not 0 < p_bp <= BASIS_POINTS:
        raise FormatError("spot probability must be in (0, 1]", got=text)
    return p_bp


def _decimal(p_bp: int) -> str:
    """The shortest decimal for ``p_bp / 10000``: ``1``, ``0.5``, ``0.05``."""
    if p_bp == BASIS_POINTS:
        return "1"
    return "0." + f"{p_bp:04d}".rstrip("0")


def _winner(value: object) -> Winner:
    if value not in WINNERS:
        raise FormatError("dispute winner must be one of " + "|".join(WINNERS), got=value)
    return value


@dataclass(frozen=True, slots=True)
class SpotReveal:
    """A ``spot:P`` verdict's draw: ``{"checked": bool}``, which must be what the request's
    draw secret (the verdict's ``draw``) implies (:func:`spot_checked`)."""

    checked: bool

    def __post_init__(self) -> None:
        if not isinstance(self.checked, bool):
            raise FormatError("verdict spot checked must be a boolean", got=self.checked)

    def to_json(self) -> dict[str, Any]:
        return {"checked": self.checked}

    @classmethod
    def from_json(cls, obj: object) -> SpotReveal:
        if not isinstance(obj, Mapping) or set(obj) != {"checked"}:
            raise FormatError('verdict spot must be {"checked": bool}')
        return cls(obj["checked"])


@dataclass(frozen=True, slots=True)
class DisputeRef:
    """A dispute the request opened, with its logged outcome: ``log_index`` is its ``verdict``
    ledger entry, ``opened`` its ``challenge`` entry (a client checks both in the log)."""

    id: str
    defendant: str
    challenger: str
    winner: Winner
    log_index: int
    opened: int | None = None

    def __post_init__(self) -> None:
        _winner(self.winner)
        for name in ("id", "defendant", "challenger"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise FormatError(f"dispute {name} must be a non-empty string")
        for name in ("log_index", "opened"):
            value = getattr(self, name)
            if value is None and name == "opened":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise FormatError(f"dispute {name} must be an integer >= 0", got=value)

    def losers(self) -> tuple[str, ...]:
        """The parties that lost: ``none`` has no loser, ``neither`` two."""
        return {
            "defendant": (self.challenger,),
            "challenger": (self.defendant,),
            "none": (),
            "neither": (self.defendant, self.challenger),
        }[self.winner]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "defendant": self.defendant,
            "challenger": self.challenger,
            "winner": self.winner,
            "log_index": self.log_index,
        }
        if self.opened is not None:
            out["opened"] = self.opened
        return out

    @classmethod
    def from_json(cls, obj: object) -> DisputeRef:
        if not isinstance(obj, Mapping):
            raise FormatError("a verdict dispute must be an object")
        try:
            return cls(
                id=obj["id"],
                defendant=obj["defendant"],
                challenger=obj["challenger"],
                winner=_winner(obj["winner"]),
                log_index=obj["log_index"],
                opened=obj.get("opened"),
            )
        except KeyError as exc:
            raise FormatError("verdict dispute is missing a member", member=str(exc)) from exc


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the policy concluded from the receipts; part of the inference log entry.

    ``spot``, ``final_after``, ``disputes`` and ``draw`` are omitted from the JSON when unset,
    so a verdict without them has the bytes it had before they existed. ``draw`` reveals the
    request's draw secret and its epoch (:mod:`veriml.protocol.draw`).
    """

    policy: str
    outcome: Outcome
    agreeing: tuple[str, ...]
    outputs: Mapping[str, Digest] = field(default_factory=dict)
    mode: str = "bitwise"
    spot: SpotReveal | None = None
    final_after: str | None = None
    disputes: tuple[DisputeRef, ...] = ()
    draw: Draw | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "policy": self.policy,
            "mode": self.mode,
            "outcome": self.outcome,
            "agreeing": list(self.agreeing),
            "outputs": {name: d.to_text() for name, d in sorted(self.outputs.items())},
        }
        if self.spot is not None:
            out["spot"] = self.spot.to_json()
        if self.final_after is not None:
            out["final_after"] = self.final_after
        if self.disputes:
            out["disputes"] = [d.to_json() for d in self.disputes]
        if self.draw is not None:
            out["draw"] = self.draw.to_json()
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Verdict:
        try:
            outcome = obj["outcome"]
            if outcome not in ("accepted", "rejected"):
                raise FormatError("verdict outcome must be accepted or rejected", got=outcome)
            agreeing = obj["agreeing"]
            outputs = obj["outputs"]
            if not isinstance(agreeing, list) or not all(isinstance(a, str) for a in agreeing):
                raise FormatError("verdict agreeing must be a list of node ids")
            if not isinstance(outputs, dict):
                raise FormatError("verdict outputs must be an object")
            mode = obj.get("mode", "bitwise")
            if mode not in COMPARES:
                raise FormatError("verdict mode must be bitwise or tolerance", got=mode)
            final_after = obj.get("final_after")
            if final_after is not None and not isinstance(final_after, str):
                raise FormatError("verdict final_after must be a timestamp string")
            disputes = obj.get("disputes", [])
            if not isinstance(disputes, list):
                raise FormatError("verdict disputes must be a list")
            spot = obj.get("spot")
            draw = obj.get("draw")
            return cls(
                policy=str(Policy.parse(str(obj["policy"]))),
                outcome=outcome,
                agreeing=tuple(agreeing),
                outputs={str(k): Digest.from_text(str(v)) for k, v in outputs.items()},
                mode=mode,
                spot=None if spot is None else SpotReveal.from_json(spot),
                final_after=final_after,
                disputes=tuple(DisputeRef.from_json(d) for d in disputes),
                draw=None if draw is None else Draw.from_json(draw),
            )
        except KeyError as exc:
            raise FormatError("verdict is missing a member", member=str(exc)) from exc


def spot_commitment(secret: bytes) -> Digest:
    """``SHA-256("veriml-spot-commit/v1\\n" || secret)``: what the signed job and receipt carry."""
    if not isinstance(secret, bytes) or len(secret) != SPOT_SECRET_SIZE:
        raise FormatError("a spot secret is 32 bytes", got=len(secret))
    return Digest.of(SPOT_COMMIT_TAG + secret)


def spot_checked(policy: Policy, secret: bytes) -> bool:
    """Whether a ``spot:P`` request is re-executed by a second node, from its draw secret.

    ``h = SHA-256("veriml-spot/v2\\n" || r)``; checked when
    ``int(h[0:8], big-endian) * 10000 < P_bp * 2**64``, i.e. with probability exactly P over
    uniform ``h``. ``r`` is fixed by the epoch key committed before the request
    (:mod:`veriml.protocol.draw`), so re-dispatching cannot draw again; the node signs its
    receipt knowing only ``spot_commitment(r)``, so it cannot tell whether it is checked.
    """
    if policy.kind != "spot":
        raise FormatError("only spot:P policies have spot checks", policy=str(policy))
    if not isinstance(secret, bytes) or len(secret) != SPOT_SECRET_SIZE:
        raise FormatError("a spot secret is 32 bytes", got=len(secret))
    h = hashlib.sha256(SPOT_DECIDE_TAG + secret).digest()
    return int.from_bytes(h[:8], "big") * BASIS_POINTS < policy.p_bp * (1 << 64)
