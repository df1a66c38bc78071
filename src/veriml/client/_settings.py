"""The SDK's settings class, read by ``pydantic-settings`` (docs/sdk.md, "Configuration").

Kept apart from :mod:`veriml.client._config`, which imports it only when settings are read:
importing ``pydantic-settings`` is slower than the rest of the SDK's start-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from veriml.client._config import config_file

__all__ = ["TRUST_ANCHORS", "ClientSettings"]

TRUST_ANCHORS = frozenset({"log_vkey", "home"})
"""Settings that decide what a client trusts: the pinned log key, and the home whose
``network.json`` pins a log key and its witnesses. Only the user sets them (arguments, the
environment, the secrets folder, the user's config file), never a ``.env`` file, which belongs
to whatever directory the command runs in (docs/threat-model.md)."""


class _NoTrustAnchors(PydanticBaseSettingsSource):
    """``source`` without the :data:`TRUST_ANCHORS`: what a file in the working directory
    may set."""

    def __init__(self, source: PydanticBaseSettingsSource) -> None:
        super().__init__(source.settings_cls)
        self._source = source

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ reads the wrapped source whole

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in self._source().items() if k not in TRUST_ANCHORS}


class ClientSettings(BaseSettings):
    """The SDK's and CLI's settings; every one is optional (``None``: use the default).

    ``home`` is the local network's folder (keys, database, blobs, ``network.json``), ``url``
    the coordinator, ``log_vkey`` the log key to pin, ``cache_dir`` the cache folder."""

    model_config = SettingsConfigDict(
        env_prefix="VERIML_", env_file=".env", env_ignore_empty=True, extra="ignore"
    )

    home: Path | None = None
    url: str | None = None
    log_vkey: str | None = None
    cache_dir: Path | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The config file is found when settings are read, so $VERIML_CONFIG set by a test or
        # a wrapper script is honoured.
        toml = TomlConfigSettingsSource(settings_cls, toml_file=config_file())
        dotenv = _NoTrustAnchors(dotenv_settings)
        return init_settings, env_settings, dotenv, file_secret_settings, toml
