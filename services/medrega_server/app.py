"""The OpenAI-compatible HTTP API: /v1/models, /v1/chat/completions, /healthz.

Errors use OpenAI's JSON (`{"error": {"message", "type", "param", "code"}}`) so OpenAI clients
raise their usual exceptions. The endpoints that run the model are plain `def`s: FastAPI runs
them in its thread pool, off the event loop; the ONNX session is shared and thread-safe.

Logs carry no PHI: never the prompt or the image, only task, language, outcome, image size and
timings.
"""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.medrega_server.answers import AnswerError, MedRegAAnswerer
from services.medrega_server.body_limit import BodyLimitMiddleware
from services.medrega_server.conversation import ConversationError, read_question
from services.medrega_server.images import ImageError, decode_data_url
from services.medrega_server.schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    ModelCard,
    ModelList,
    Usage,
    error_body,
)
from services.medrega_server.settings import ServerSettings, load_server_settings
from services.medrega_server.tokens import count_tokens
from shared.inference.medrega_prompts import UnknownPrompt, classify_prompt
from shared.inference.onnx_backend import OnnxBackend

log = logging.getLogger("services.medrega_server")
OWNER = "medrega-pacs"


class ApiError(Exception):
    """An error answered in OpenAI's format."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code


def _error_response(error: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse(
        error_body(error.message, error.type, error.code), status_code=error.status, headers=headers
    )


def _validation_message(exc: RequestValidationError) -> str:
    # Only where and what: pydantic's `input` would echo the prompt or the image back.
    problems = [
        f"{'.'.join(str(p) for p in err.get('loc', ()) if p != 'body') or 'body'}: {err.get('msg')}"
        for err in exc.errors()[:5]
    ]
    return "invalid request: " + "; ".join(problems)


def create_app(
    settings: ServerSettings | None = None, *, backend: OnnxBackend | None = None
) -> FastAPI:
    """The server for `settings` (environment MEDREGA_SERVER_* by default).

    `backend` lets tests share one loaded model between apps."""
    settings = settings or load_server_settings()
    backend = backend or OnnxBackend(settings.model_path, settings.providers)
    answerer = MedRegAAnswerer(backend, model_name=settings.model_name, scale=settings.scale)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.load_on_startup:
            started = time.perf_counter()
            version = backend.model_version  # loads the session
            log.info(
                "model %s (%s) ready in %.0f ms",
                settings.model_name,
                version,
                (time.perf_counter() - started) * 1000,
            )
        yield

    app = FastAPI(
        title="medrega-pacs MedRegA-compatible server",
        version="0.1.0",
        description="OpenAI-compatible chat completions answering MedRegA's region prompts.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error_response(ApiError(400, _validation_message(exc)))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return _error_response(ApiError(exc.status_code, str(exc.detail), type_))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error (%s) on %s", type(exc).__name__, request.url.path)
        return _error_response(ApiError(500, "internal server error", "server_error"))

    def authorized(authorization: Annotated[str | None, Header()] = None) -> None:
        if settings.api_key is None:
            return
        expected = f"Bearer {settings.api_key.get_secret_value()}".encode()
        if authorization is None or not hmac.compare_digest(authorization.encode(), expected):
            raise ApiError(
                401,
                "missing or incorrect API key (Authorization: Bearer …)",
                code="invalid_api_key",
            )

    auth = [Depends(authorized)]

    def model_card() -> ModelCard:
        return ModelCard(id=settings.model_name, created=created, owned_by=OWNER)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        try:
            version = backend.model_version
        except Exception as exc:  # a broken model file: not ready
            log.error("model not loadable: %s", type(exc).__name__)
            raise ApiError(503, "model not loaded", "server_error") from exc
        return {"status": "ok", "model": settings.model_name, "model_version": version}

    @app.get("/v1/models", dependencies=auth)
    def list_models() -> ModelList:
        return ModelList(data=[model_card()])

    @app.get("/v1/models/{model_id}", dependencies=auth)
    def retrieve_model(model_id: str) -> ModelCard:
        if model_id != settings.model_name:
            raise ApiError(404, f"the model {model_id!r} does not exist", code="model_not_found")
        return model_card()

    @app.post("/v1/chat/completions", dependencies=auth)
    def chat_completions(request: ChatCompletionRequest) -> ChatCompletion:
        started = time.perf_counter()
        if request.stream:
            raise ApiError(
                400,
                "stream=true is not supported by this server; send stream=false (or omit it)",
                code="unsupported_parameter",
            )
        if request.n not in (None, 1):
            raise ApiError(400, "only n=1 is supported (answers are deterministic)")
        if request.model != settings.model_name:
            raise ApiError(
                404,
                f"the model {request.model!r} does not exist; this server serves "
                f"{settings.model_name!r}",
                code="model_not_found",
            )
        try:
            question = read_question(request.messages)
            task = classify_prompt(question.text, answerer.kind_of)
        except (ConversationError, UnknownPrompt) as exc:
            raise ApiError(400, str(exc)) from exc
        if question.image_url is None:
            raise ApiError(400, "the conversation holds no image (an image_url content part)")
        try:
            image = decode_data_url(question.image_url, max_pixels=settings.max_image_pixels)
        except ImageError as exc:
            raise ApiError(400, str(exc)) from exc
        decoded = time.perf_counter()
        try:
            answer = answerer.answer(task, image, request.pixel_spacing_mm)
        except AnswerError as exc:
            raise ApiError(400, str(exc)) from exc
        answered = time.perf_counter()
        completion_tokens = count_tokens(answer.text)
        log.info(
            "chat completion task=%s language=%s outcome=%s image=%dx%d decode_ms=%.1f "
            "model_ms=%.1f",
            task.task,
            task.language,
            answer.outcome,
            image.width,
            image.height,
            (decoded - started) * 1000,
            (answered - decoded) * 1000,
        )
        return ChatCompletion(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=settings.model_name,
            choices=[Choice(message=AssistantMessage(content=answer.text), finish_reason="stop")],
            usage=Usage(
                prompt_tokens=question.prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=question.prompt_tokens + completion_tokens,
            ),
        )

    return app
