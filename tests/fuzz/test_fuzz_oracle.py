"""The fuzz targets' oracle catches what it claims to: an allocation past the bound, an error
the parser does not document, any other exception, and a refusal that cannot render."""

from __future__ import annotations

import numpy as np
import pytest
from _fuzzing import MIB, AllocationExceeded, attempt

from veriml.core.errors import FormatError, InvalidModelError


def test_a_case_that_allocates_past_its_bound_fails_even_when_it_returns() -> None:
    with pytest.raises(AllocationExceeded, match="Python heap"):
        attempt(lambda: bytearray(100 * MIB), allowed=(FormatError,), size=10)
    with pytest.raises(AllocationExceeded):
        attempt(lambda: np.ones(100 * MIB // 8), allowed=(FormatError,), size=10)


def test_the_bound_grows_with_the_input() -> None:
    value, error = attempt(lambda: bytes(80 * MIB), allowed=(FormatError,), size=1 * MIB)
    assert error is None
    assert value is not None
    assert len(value) == 80 * MIB


def test_a_documented_error_is_an_outcome_and_anything_else_a_crash() -> None:
    def refuse() -> None:
        raise FormatError("no", member="x")

    assert isinstance(attempt(refuse, allowed=(FormatError,), size=0)[1], FormatError)
    with pytest.raises(AssertionError, match="not an error this parser documents"):
        attempt(refuse, allowed=(InvalidModelError,), size=0)
    empty: dict[str, int] = {}
    with pytest.raises(KeyError):
        attempt(lambda: empty["x"], allowed=(FormatError,), size=0)


def test_a_refusal_that_cannot_render_as_a_problem_document_is_a_crash() -> None:
    def refuse() -> None:
        raise FormatError("no", member=object())  # evidence no JSON encoder takes as is

    # problems._jsonable shows unknown objects as text: this one renders.
    assert attempt(refuse, allowed=(FormatError,), size=0)[1] is not None

    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no text")

    def refuse_badly() -> None:
        raise FormatError("no", member=Unprintable())

    with pytest.raises(AssertionError, match="does not render"):
        attempt(refuse_badly, allowed=(FormatError,), size=0)
