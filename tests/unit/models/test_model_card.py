"""Model cards: typed front matter of README.md; bad fields name the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veriml.core import Digest
from veriml.core.errors import InvalidModelError
from veriml.models import ModelCard

PARENT = "sha256:" + "ab" * 32

CARD = f"""---
name: tiny-regressor
version: "1.10"
license: apache-2.0
task: regression
parents:
  - {PARENT}
datasets:
  - sha256:{"cd" * 32}
  - hf://datasets/scikit-learn/iris
tags: [demo, tiny]
base_model_relation: finetune
---
# Tiny regressor

Body text is not metadata.
"""


def test_front_matter_is_parsed_into_typed_fields() -> None:
    card = ModelCard.from_text(CARD)
    assert card is not None
    assert (card.name, card.version, card.license, card.task) == (
        "tiny-regressor",
        "1.10",
        "apache-2.0",
        "regression",
    )
    assert card.parents == (Digest.from_text(PARENT),)
    assert card.datasets == (Digest.from_hex("cd" * 32), "hf://datasets/scikit-learn/iris")
    assert card.extra == {"tags": ["demo", "tiny"], "base_model_relation": "finetune"}


def test_a_readme_without_front_matter_has_no_card(tmp_path: Path) -> None:
    assert ModelCard.from_text("# Just a title\n---\nname: x\n---\n") is None
    assert ModelCard.from_file(tmp_path / "README.md") is None


@pytest.mark.parametrize(
    ("front", "field"),
    [
        ("parents: [sha256:1234]", "parents"),
        ("parents: [md5:abcd]", "parents"),
        ("parents: sha256:" + "ab" * 32, "parents"),
        ("datasets: [iris]", "datasets"),
        ("datasets: [42]", "datasets"),
        ("name: [a, b]", "name"),
        ("license: true", "license"),
        ("version: 1.0", "version"),
    ],
)
def test_invalid_fields_are_named(tmp_path: Path, front: str, field: str) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"---\n{front}\n---\n")
    with pytest.raises(InvalidModelError) as info:
        ModelCard.from_file(readme)
    assert info.value.evidence["path"] == str(readme)
    assert info.value.evidence["field"] == field


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("---\nname: x\n", "no closing"),
        ("---\nname: [unclosed\n---\n", "not valid YAML"),
        ("---\n- a\n- b\n---\n", "mapping"),
        ("---\n!!python/object/apply:os.system [echo pwned]\n---\n", "not valid YAML"),
    ],
)
def test_malformed_front_matter_is_refused(text: str, reason: str) -> None:
    with pytest.raises(InvalidModelError, match=reason):
        ModelCard.from_text(text)


def _laughs(depth: int) -> str:
    """The "billion laughs": each level a list of ten aliases of the level below."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, depth + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "---\nname: x\n" + "\n".join(lines) + "\n---\n"


def test_an_alias_is_refused_before_anything_expands() -> None:
    # Nine levels are 10^9 nodes once constructed; refused while composing, before that.
    with pytest.raises(InvalidModelError, match="not valid YAML") as info:
        ModelCard.from_text(_laughs(9))
    assert "aliases" in str(info.value.evidence["reason"])
    with pytest.raises(InvalidModelError, match="not valid YAML"):
        ModelCard.from_text("---\nname: &n x\nversion: *n\n---\n")


def test_an_anchor_without_an_alias_is_harmless() -> None:
    card = ModelCard.from_text("---\nname: &n x\n---\n")
    assert card is not None
    assert card.name == "x"


def test_deep_nesting_is_refused_not_a_recursion_error() -> None:
    deep = "---\nname: x\ntags: " + "[" * 5000 + "]" * 5000 + "\n---\n"
    with pytest.raises(InvalidModelError, match="not valid YAML") as info:
        ModelCard.from_text(deep)
    assert "nesting" in str(info.value.evidence["reason"])
    ok = "---\nname: x\ntags: " + "[" * 32 + "]" * 32 + "\n---\n"
    assert ModelCard.from_text(ok) is not None


def test_integer_versions_are_kept_as_text() -> None:
    card = ModelCard.from_text("---\nversion: 3\n---\n")
    assert card is not None
    assert card.version == "3"


texts = st.text(st.characters(blacklist_categories=["Cs", "Cc"]), min_size=1, max_size=30)
digests = st.binary(min_size=32, max_size=32).map(Digest)
uris = st.from_regex(r"\A(https|hf|s3)://[a-z0-9/._-]{1,30}\Z")
extra_keys = st.text("abcdefghij_", min_size=1, max_size=10).filter(
    lambda k: k not in ("name", "version", "license", "task", "parents", "datasets")
)


@settings(max_examples=75, deadline=None)
@given(
    name=st.none() | texts,
    version=st.none() | texts,
    license_=st.none() | texts,
    task=st.none() | texts,
    parents=st.lists(digests, max_size=3).map(tuple),
    datasets=st.lists(digests | uris, max_size=3).map(tuple),
    extra=st.dictionaries(extra_keys, texts | st.integers() | st.booleans(), max_size=3),
)
def test_card_round_trips_through_front_matter(
    name: str | None,
    version: str | None,
    license_: str | None,
    task: str | None,
    parents: tuple[Digest, ...],
    datasets: tuple[Digest | str, ...],
    extra: dict[str, object],
) -> None:
    card = ModelCard(
        name=name,
        version=version,
        license=license_,
        task=task,
        parents=parents,
        datasets=datasets,
        extra=extra,
    )
    assert ModelCard.from_text(card.to_text() + "# body\n") == card
