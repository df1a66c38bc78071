"""The published check names: every ``check=`` in the sources is one, and no other is taken."""

import ast
from pathlib import Path

import pytest

import veriml
from veriml.errors import Check, DigestMismatchError, VerificationError

SRC = Path(veriml.__file__).parent


def _checks() -> tuple[dict[str, str], dict[str, str]]:
    """Every ``check=`` argument in the sources, with where it is: string literals, and
    members named as ``Check.NAME``."""
    literals: dict[str, str] = {}
    members: dict[str, str] = {}
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            for keyword in node.keywords:
                value, where = keyword.value, f"{path.relative_to(SRC)}:{node.lineno}"
                if keyword.arg != "check":
                    continue
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    literals.setdefault(value.value, where)
                elif (
                    isinstance(value, ast.Attribute)
                    and isinstance(value.value, ast.Name)
                    and value.value.id == "Check"
                ):
                    members.setdefault(value.attr, where)
    return literals, members


def test_every_check_in_the_sources_is_a_published_name() -> None:
    literals, members = _checks()
    assert len(members) > 50, "the scan found few Check members: it is looking in the wrong place"
    unknown = {name: where for name, where in literals.items() if name not in set(Check)}
    assert not unknown
    assert not {name: where for name, where in members.items() if name not in Check.__members__}


def test_a_check_name_is_kept_as_the_string_it_always_was() -> None:
    error = VerificationError("proof does not verify", check="inclusion")
    assert error.check is Check.INCLUSION
    assert error.check == "inclusion"
    assert error.diagnostics() == "inclusion: proof does not verify"


def test_an_unknown_check_name_is_refused_where_the_error_is_built() -> None:
    with pytest.raises(ValueError, match="unknown check name 'inclusoin'"):
        VerificationError("proof does not verify", check="inclusoin")
    with pytest.raises(ValueError, match=r"veriml\.errors\.Check"):
        DigestMismatchError("digest differs", expected="a", calculated="b", check="digets")


def test_no_check_name_is_fine() -> None:
    assert VerificationError("failed").check is None


def test_the_old_class_names_still_import_with_a_deprecation_warning() -> None:
    import veriml.errors as errors

    with pytest.warns(DeprecationWarning, match="DigestMismatchError"):
        assert errors.DigestMismatch is DigestMismatchError  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        _ = errors.NoSuchError  # type: ignore[attr-defined]


def test_docs_list_exactly_the_published_names() -> None:
    doc = (Path(__file__).parents[3] / "docs" / "verification.md").read_text()
    section = doc.split("## Check names", 1)[1].split("\n## ", 1)[0]
    listed = [
        name
        for line in section.splitlines()
        if line.startswith("- ")
        for name in line.split(": ", 1)[1].split("`")[1::2]
    ]
    assert sorted(listed) == sorted(Check)
