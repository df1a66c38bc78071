"""The SDK's settings class, read by ``pydantic-settings`` (docs/sdk.md, "Configuration").

Kept apart from :mod:`veriml.client._config`, which imports it only when settings are read:
importing ``pydantic-settings`` is slower than the rest of the SDK's start-up.
"""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from veriml.client._config import config_file

__all__ = ["ClientSettings"]


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
        return init_settings, env_settings, dotenv_settings, file_secret_settings, toml
