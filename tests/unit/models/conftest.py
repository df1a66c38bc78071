"""Fixtures for model-package tests: EC publisher keys and tiny real ONNX model folders."""

from __future__ import annotations

from pathlib import Path

import pytest
from model_builders import ec_key_pair, write_model_folder


@pytest.fixture
def ec_keys(tmp_path: Path) -> tuple[Path, Path]:
    """(private key file, public key file) of a fresh P-256 publisher key."""
    return ec_key_pair(tmp_path / "keys")


@pytest.fixture
def ec_key(ec_keys: tuple[Path, Path]) -> Path:
    return ec_keys[0]


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A valid model folder: model.onnx with weights in external data, and a model card."""
    readme = "---\nname: tiny\nversion: '1.0'\nlicense: apache-2.0\ntask: regression\n---\n# Tiny\n"
    return write_model_folder(tmp_path / "tiny", external=True, readme=readme)
