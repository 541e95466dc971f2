"""Run the MedRegA-compatible server with uvicorn.

    python -m services.medrega_server --host 127.0.0.1 --port 8012 [--model PATH]
        [--model-name medrega-ref] [--scale 999] [--providers CUDAExecutionProvider,...]

Every flag defaults to its MEDREGA_SERVER_* environment variable (see settings.py); the API key
comes only from the environment (MEDREGA_SERVER_API_KEY) or a secrets file
(MEDREGA_SECRETS_DIR/medrega_server_api_key), never from the command line, where `ps` would show it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from services.medrega_server.app import create_app
from services.medrega_server.settings import ServerSettings, load_server_settings
from shared.config import split_csv
from shared.observability.logs import configure_logging, log_format_from_env


def parse_args(argv: Sequence[str] | None, defaults: ServerSettings) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m services.medrega_server",
        description="OpenAI-compatible server answering MedRegA prompts with medrega-ref.",
    )
    parser.add_argument("--host", default=defaults.host)
    parser.add_argument("--port", type=int, default=defaults.port)
    parser.add_argument("--model", type=Path, default=defaults.model_path, help="ONNX file")
    parser.add_argument("--model-name", default=defaults.model_name)
    parser.add_argument("--scale", type=int, default=defaults.scale, help="box grid (0..scale)")
    parser.add_argument(
        "--providers",
        default=",".join(defaults.providers),
        help="ONNX Runtime execution providers, in order of preference",
    )
    parser.add_argument("--log-level", default=defaults.log_level)
    args = parser.parse_args(argv)
    if args.scale < 1:
        parser.error("--scale must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    defaults = load_server_settings()
    args = parse_args(argv, defaults)
    settings = defaults.model_copy(
        update={
            "host": args.host,
            "port": args.port,
            "model_path": args.model,
            "model_name": args.model_name,
            "scale": args.scale,
            "providers": split_csv(args.providers),
            "log_level": args.log_level,
        }
    )
    configure_logging(
        "medrega-server",
        log_format_from_env(),
        settings.log_level.upper(),
        text_format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        # Access log lines hold method, path and status only (no PHI in our URLs).
        access_log=True,
        log_config=None,  # uvicorn's lines go through our handler (text or JSON)
    )


if __name__ == "__main__":
    main()
