"""Deployment settings of the MedRegA-compatible server (env prefix MEDREGA_SERVER_).

Kept apart from `shared.config.Settings` (prefix MEDREGA_) so that the server can run next to
a worker with its own model path, providers and API key; the model path defaults to the
project's bundled model. Command-line flags (`__main__`) override these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.config import get_settings, secrets_dir, split_csv
from shared.inference.onnx_backend import MODEL_NAME


def _default_model_path() -> Path:
    return get_settings().model_path


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDREGA_SERVER_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8012
    model_path: Path = Field(default_factory=_default_model_path)
    # The name clients put in `model` (and /v1/models lists).
    model_name: str = MODEL_NAME
    # ONNX Runtime providers in order of preference (comma-separated in the environment).
    providers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["CPUExecutionProvider"]
    )
    # MedRegA's text boxes are integers on a 0..scale grid (999 for MedRegA).
    scale: int = Field(default=999, ge=1)
    # When set, every /v1 request needs `Authorization: Bearer <key>`.
    api_key: SecretStr | None = None
    # Request bodies above this are refused (413) before they are read into memory.
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # Decoded images above this many pixels are refused (decompression bombs).
    max_image_pixels: int = Field(default=64_000_000, ge=64 * 64)
    # Load the model before the first request (a broken model path fails at start-up).
    load_on_startup: bool = True
    log_level: str = "INFO"

    @field_validator("api_key")
    @classmethod
    def _empty_key_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty secret file means no key, as the worker reads its own (README "Secrets").
        return value if value is not None and value.get_secret_value().strip() else None

    @field_validator("providers", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return split_csv(value)


def load_server_settings() -> ServerSettings:
    """MEDREGA_SERVER_* from the environment, and from MEDREGA_SECRETS_DIR the files named like
    the setting (`medrega_server_api_key`), as every other service reads its secrets; the
    environment wins over a file."""
    return ServerSettings(_secrets_dir=secrets_dir())  # type: ignore[call-arg]
