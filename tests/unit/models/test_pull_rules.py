"""What a pull accepts from a hub before downloading anything: paths that stay inside the
model folder, and a well-formed record."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from veriml.core.digest import Digest
from veriml.core.errors import FormatError, InvalidModelError
from veriml.core.keys import generate_key
from veriml.models.pull import HubModel, safe_relative

_part = st.text(
    alphabet=st.characters(blacklist_characters="/\\\x00", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=12,
).filter(lambda p: p not in {".", ".."})


@given(st.lists(_part, min_size=1, max_size=5))
def test_accepted_paths_stay_inside_the_folder(parts: list[str]) -> None:
    name = "/".join(parts)
    if name == "model.sig":
        return
    rel = safe_relative(name)
    root = Path("/cache/model")
    assert (root / rel).resolve().is_relative_to(root)


@given(st.lists(_part, max_size=3), st.lists(_part, max_size=3))
def test_a_dot_dot_component_anywhere_is_refused(before: list[str], after: list[str]) -> None:
    with pytest.raises(InvalidModelError):
        safe_relative("/".join([*before, "..", *after]))


@pytest.mark.parametrize("name", ["", "/abs", "a//b", "a/./b", "a/", "a\\..\\b", "model.sig"])
def test_ambiguous_or_reserved_paths_are_refused(name: str) -> None:
    with pytest.raises(InvalidModelError):
        safe_relative(name)


def _record() -> dict[str, object]:
    return {
        "digest": Digest.of(b"m").to_text(),
        "files": [{"path": "model.onnx", "digest": Digest.of(b"f").to_text(), "size": 1}],
        "publisher": {"public_key": generate_key("ec").public.to_pem().decode()},
        "signature": Digest.of(b"s").to_text(),
    }


def test_a_hub_record_names_files_publisher_key_and_signature() -> None:
    hub = HubModel.from_json(_record())
    assert hub.size == 1
    assert hub.files[0].path == "model.onnx"
    assert hub.publisher_key.kind == "ec"


@pytest.mark.parametrize(
    ("member", "value"),
    [
        ("files", "model.onnx"),
        ("files", [{"path": "a", "digest": Digest.of(b"f").to_text(), "size": -1}]),
        ("files", [{"path": "a", "digest": "md5:00", "size": 1}]),
        ("publisher", {}),
        ("signature", None),
        ("digest", "nope"),
    ],
)
def test_a_malformed_hub_record_is_refused(member: str, value: object) -> None:
    record = _record() | {member: value}
    with pytest.raises(FormatError):
        HubModel.from_json(record)
