"""Model cards: any README front matter parses or is an InvalidModelError naming the file, aliases
and deep nesting are refused before they expand, and a parsed card survives
``to_text``/``from_text``."""

from __future__ import annotations

import json

from _fuzzing import attempt, fuzz_settings, mutated_bytes, text_of
from hypothesis import example, given
from hypothesis import strategies as st

from veriml.core.errors import InvalidModelError
from veriml.models.card import ModelCard

CARDS = [
    "---\nname: mlp\nversion: 1.0.0\nlicense: Apache-2.0\ntask: classification\n"
    "parents: [sha256:" + "ab" * 32 + "]\n"
    "datasets: [hf://datasets/iris, sha256:" + "cd" * 32 + "]\n---\n\n# mlp\n",
    "---\nname: x\nversion: 3\nextra:\n  nested: {a: [1, 2.5, null, true]}\n"
    "  when: 2026-11-26\n  blob: !!binary aGVsbG8=\n  set: !!set {a, b}\n...\n",
    "---\n---\n",
    "# no front matter\n",
]
YAML_TOKENS = [
    t.encode()
    for t in (
        "---\n",
        "...\n",
        "&a ",
        "*a",
        "<<: ",
        "!!binary ",
        "!!python/object:os.system ",
        "!!float ",
        "!!int ",
        "!!timestamp ",
        "!!set ",
        "!!omap ",
        "? ",
        "[",
        "{",
        ": ",
        "- ",
        "|\n",
        "\t",
        "2020-13-45",
        "2001-12-14t21:59:43.10+99:00",
        "0x",
        "0o",
        "1_000",
        ".inf",
        "1" * 5000,
        "%YAML 1.1\n",
        "'",
        '"\\x',
    )
]


@st.composite
def yaml_pieces(draw: st.DrawFn) -> str:
    """Front matter assembled from YAML's sharp edges: anchors, tags, flows, timestamps."""
    pieces = draw(st.lists(st.sampled_from(YAML_TOKENS) | st.binary(max_size=6), max_size=12))
    return "---\n" + text_of(b"".join(pieces)) + "\n---\n"


texts = st.one_of(
    mutated_bytes([c.encode() for c in CARDS], YAML_TOKENS).map(text_of),
    yaml_pieces(),
    st.text(max_size=300).map(lambda body: f"---\n{body}\n---\n"),
)


def _json(card: ModelCard) -> str:
    return json.dumps(card.to_json(), sort_keys=True, default=repr)


@fuzz_settings()
@given(texts)
# Found by this target: PyYAML's constructors raised ValueError, IndexError or AttributeError
# for values their tags or patterns admit but cannot build.
@example("---\nversion: 2020-13-45\n---\n")
# Found by this target: a !!set became a Python set, whose order (and so the card's JSON and
# its text form) changed with the interpreter's hash seed.
@example("---\nset: !!set {b, a}\n---\n")
@example("---\n2001-12-14t21:59:43.10+99:00\n---\n")
@example("---\nname: " + "1" * 5000 + "\n---\n")
@example("---\n!!int \n---\n")
@example("---\n!!int ---\n\n---\n")
@example("---\n!!float ---\n\n---\n")
@example("---\n!!timestamp \n---\n")
def test_a_card_parses_and_survives_its_text_form_or_is_invalid_model(text: str) -> None:
    size = len(text.encode("utf-8", "surrogatepass"))
    card, error = attempt(
        lambda: ModelCard.from_text(text), allowed=(InvalidModelError,), size=size
    )
    if error is not None:
        assert error.evidence["path"] == "README.md"
    if card is not None:
        again, _ = attempt(lambda: ModelCard.from_text(card.to_text()), allowed=(), size=size)
        assert again is not None
        assert _json(again) == _json(card)
