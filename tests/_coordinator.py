"""Helpers for tests that run a real coordinator: signed example models, tar uploads, an app
on loopback. Shared by the coordinator tests (and usable by any network test)."""

from __future__ import annotations

import base64
import contextlib
import io
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from _servers import serve
from veriml.coordinator.app import create_app
from veriml.coordinator.auth import sign_request
from veriml.coordinator.settings import Settings
from veriml.core.keys import SigningKey, generate_key
from veriml.models import sign_model
from veriml.models.examples import build_mlp, write_example_folder


@dataclass(frozen=True)
class SignedModel:
    folder: Path
    key: SigningKey

    @property
    def headers(self) -> dict[str, str]:
        """The publisher key header alone (the request itself unsigned)."""
        return publisher_headers(self.key)

    def upload_headers(self, body: bytes, url: str) -> dict[str, str]:
        """The headers of a publication of ``body`` to the hub at ``url``: the publisher key,
        and the request signed by that key (what a hub requires by default)."""
        return sign_request(self.key, "POST", url + "/v1/models", body, self.headers)

    def tar(self, *, arcname: str = ".", mode: str = "w") -> bytes:
        return tar_folder(self.folder, arcname=arcname, mode=mode)

    def post(self, url: str, body: bytes | None = None, **kwargs: Any) -> httpx.Response:
        """``POST /v1/models`` of ``body`` (default: the folder's tar), signed as a publisher
        signs it."""
        body = self.tar() if body is None else body
        headers = self.upload_headers(body, url)
        return httpx.post(url + "/v1/models", content=body, headers=headers, **kwargs)


def publisher_headers(key: SigningKey) -> dict[str, str]:
    return {"X-Veriml-Publisher-Key": base64.b64encode(key.public.to_pem()).decode()}


def make_signed_model(
    root: Path,
    *,
    name: str = "mlp",
    version: str = "1.0.0",
    seed: int = 0,
    parents: tuple[str, ...] = (),
    task: str = "classification",
    key: SigningKey | None = None,
) -> SignedModel:
    """A real example MLP folder with a model card, signed with an EC key (OMS)."""
    folder = write_example_folder(
        root / f"{name}-{version}-{seed}",
        build_mlp((4, 8, 3), seed=seed),
        name=name,
        version=version,
        parents=parents,
        task=task,
    )
    key = key or generate_key("ec")
    key_path = root / f"{name}-{version}-{seed}.key"
    if not key_path.exists():
        key.save(key_path)
    sign_model(folder, key_path)
    return SignedModel(folder, key)


def copy_model(model: SignedModel, dest: Path) -> SignedModel:
    shutil.copytree(model.folder, dest)
    return SignedModel(dest, model.key)


def tar_folder(folder: Path, *, arcname: str = ".", mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as archive:
        archive.add(folder, arcname=arcname)
    return buf.getvalue()


def tar_members(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    """A tar built member by member (for hostile archives)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


@contextlib.contextmanager
def running_coordinator(home: Path, **settings: Any) -> Iterator[tuple[str, FastAPI]]:
    """A coordinator app on 127.0.0.1 with state under ``home``; yields (URL, app)."""
    app = create_app(Settings(home=home, **settings))
    with serve(app) as url:
        yield url, app
