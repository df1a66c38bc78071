"""Red team: hostile bytes at the coordinator's edges cost nothing and lose nothing (issue 11,
item 1).

Attacks, each of which must fail with a 4xx problem, nothing stored and nothing logged:

- an upload nobody signed reaches the archive parser: it must not; the request signature over
  the spooled body's digest is checked first, so garbage signed by nobody is a 403, not a 400;
- a GNU long-name or pax header claiming 200 MB, inside a 200 KB gzip upload (CPython's
  ``tarfile`` reads such a header whole): refused from its size field, before it is read;
- a compression bomb (80 MB of zeros in 80 KB of gzip): refused by the compression ratio;
- a signed model whose card nests YAML aliases nine deep ("billion laughs", 10^9 nodes):
  refused while the YAML is composed, before anything expands;
- JSON no parser should accept, on every POST route: a 5,000-digit integer (beyond Python's
  digit limit), nesting 100,000 deep, ``1e999``, a tensor shape whose product overflows 64 bits.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from _coordinator import SignedModel, copy_model, make_signed_model, running_coordinator
from veriml.coordinator.hub.archive import MAX_HEADER_BYTES
from veriml.models import sign_model


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, FastAPI]]:
    with running_coordinator(tmp_path_factory.mktemp("hostile") / "home") as running:
        yield running


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> SignedModel:
    return make_signed_model(tmp_path_factory.mktemp("models"), name="hostile", version="1")


def _log_size(url: str) -> int:
    return int(httpx.get(url + "/log/checkpoint").text.splitlines()[1])


def _refused(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return dict(response.json())


def _nothing_stored(url: str, app: FastAPI, size: int) -> None:
    assert _log_size(url) == size
    assert httpx.get(url + "/v1/models").json()["models"] == []
    staging = app.state.coordinator.hub.staging_root
    assert not staging.exists() or not any(staging.iterdir())


def _extended_header(kind: bytes, claimed: int) -> bytes:
    """A tar whose first header is an extended header of type ``kind`` claiming ``claimed``
    bytes, followed by that many zero bytes (so the claim is not simply truncated)."""
    info = tarfile.TarInfo("././@LongLink")
    info.type = kind
    info.size = claimed
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6) as gz:
        gz.write(header)
        zeros = b"\0" * (1 << 20)
        for _ in range(claimed // len(zeros) + 1):
            gz.write(zeros)
    return out.getvalue()


def test_an_upload_nobody_signed_is_refused_before_it_is_parsed(
    network: tuple[str, FastAPI], model: SignedModel
) -> None:
    url, app = network
    size = _log_size(url)
    signed_for = model.tar()
    garbage = b"not a tar archive at all" * 100
    # The publisher's signature over other bytes: the body's digest does not match.
    headers = model.upload_headers(signed_for, url)
    problem = _refused(httpx.post(url + "/v1/models", content=garbage, headers=headers), 403)
    assert problem["check"] == "request-signature"
    # A header bomb signed by nobody is refused the same way, not as a 413 of its header.
    bomb = _extended_header(tarfile.GNUTYPE_LONGNAME, 64 << 20)
    problem = _refused(httpx.post(url + "/v1/models", content=bomb, headers=headers), 403)
    assert problem["check"] == "request-signature"
    _nothing_stored(url, app, size)


@pytest.mark.parametrize("kind", [tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE])
def test_an_extended_header_claiming_megabytes_is_refused_from_its_size(
    network: tuple[str, FastAPI], model: SignedModel, kind: bytes
) -> None:
    url, app = network
    size = _log_size(url)
    body = _extended_header(kind, 200 << 20)
    assert len(body) < 400 << 10  # 200 MB claimed in a few hundred KB
    problem = _refused(model.post(url, body), 413)
    assert "extended header" in str(problem["detail"])
    assert problem["limit"] == MAX_HEADER_BYTES
    _nothing_stored(url, app, size)


def test_a_compression_bomb_is_refused_by_its_ratio(
    network: tuple[str, FastAPI], model: SignedModel
) -> None:
    url, app = network
    size = _log_size(url)
    info = tarfile.TarInfo("model.onnx")
    info.size = 80 << 20
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as gz:
        gz.write(info.tobuf(format=tarfile.PAX_FORMAT))
        for _ in range(80):
            gz.write(b"\0" * (1 << 20))
    body = out.getvalue()
    assert len(body) < 200 << 10
    problem = _refused(model.post(url, body), 413)
    assert "compression ratio" in str(problem["detail"])
    _nothing_stored(url, app, size)


def test_a_signed_card_of_nested_aliases_is_refused_before_it_expands(
    network: tuple[str, FastAPI], model: SignedModel, tmp_path: Path
) -> None:
    url, app = network
    size = _log_size(url)
    hostile = copy_model(model, tmp_path / "laughs")
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    card = "---\nname: hostile\nversion: '2'\n" + "\n".join(lines) + "\n---\n# Laughs\n"
    (hostile.folder / "README.md").write_text(card)
    key_path = tmp_path / "publisher.key"
    hostile.key.save(key_path)
    (hostile.folder / "model.sig").unlink()
    sign_model(hostile.folder, key_path)  # the publisher really signed it
    problem = _refused(hostile.post(url), 400)
    assert problem["path"].endswith("README.md")
    assert "aliases" in str(problem["reason"])
    _nothing_stored(url, app, size)


_HOSTILE_JSON = {
    "a 5,000-digit integer": b'{"model": "m", "inputs": {"x": ' + b"7" * 5000 + b"}}",
    "nesting 100,000 deep": b'{"model": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "1e999": b'{"model": "m", "inputs": {"x": {"dtype": "float32", "shape": [1], '
    b'"data": [1e999]}}, "temperature": 1e999, "max_tokens": 1e999}',
    "a shape overflowing 64 bits": b'{"model": "m", "inputs": {"x": {"dtype": "float32", '
    b'"shape": [4294967296, 4294967296, 4294967296], "b64": ""}}}',
}


def test_hostile_json_is_a_4xx_problem_on_every_post_route(
    network: tuple[str, FastAPI],
) -> None:
    url, app = network
    size = _log_size(url)
    routes = sorted(
        path
        for path, operations in app.openapi()["paths"].items()
        if "post" in operations and "{" not in path and path != "/v1/models"
    )
    assert {"/v1/inferences", "/v1/chat/completions", "/v1/nodes", "/v1/disputes"} <= set(routes)
    for route in routes:
        for name, body in _HOSTILE_JSON.items():
            response = httpx.post(
                url + route,
                content=body,
                headers={"content-type": "application/json", "Idempotency-Key": "k-" + name[:3]},
            )
            assert 400 <= response.status_code < 500, (route, name, response.text[:300])
            assert response.headers["content-type"].startswith(
                ("application/problem+json", "application/json")  # OpenAI routes: OpenAI errors
            ), (route, name)
    assert _log_size(url) == size
