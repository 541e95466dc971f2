"""A small client for an OpenAI-compatible chat-completions server (lmdeploy, vLLM, our own
`services.medrega_server`), the way MedRegA is served: one image, one question, text back.

Retries with backoff on what is worth retrying (connection errors, timeouts, 429, 5xx), a
process-wide limit on requests in flight, and two errors callers can act on:
`ModelServerUnavailable` (try later) and `ModelAnswerInvalid` (the request itself was refused).
"""

from __future__ import annotations

import base64
import threading
import time
from typing import Any

import httpx

from shared.inference.backend import ModelAnswerInvalid, ModelServerUnavailable

RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
# Configuration problems: the server is there but won't serve us until someone fixes it.
CONFIG_STATUS = {401, 403, 404}


class ChatClient:
    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        system_prompt: str | None = None,
        timeout_s: float = 120.0,
        retries: int = 2,
        concurrency: int = 4,
        max_tokens: int = 1024,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.system_prompt = system_prompt
        self.retries = retries
        self.max_tokens = max_tokens
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
        )
        self._slots = threading.BoundedSemaphore(concurrency)

    def close(self) -> None:
        self._http.close()

    def _body(self, prompt: str, png: bytes, extra: dict[str, Any] | None) -> dict[str, Any]:
        image_url = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        messages: list[dict[str, Any]] = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.append(
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": image_url}},
                    {"type": "text", "text": prompt},
                ],
            }
        )
        # Greedy decoding, as MedRegA is evaluated: the same image gets the same answer.
        return {
            "model": self.model,
            "messages": messages,
            "max_tokens": self.max_tokens,
            "temperature": 0.0,
            "stream": False,
            **(extra or {}),
        }

    def ask(self, prompt: str, png: bytes, extra: dict[str, Any] | None = None) -> str:
        """The assistant's text for one image and one prompt (`extra`: vendor body fields)."""
        body = self._body(prompt, png, extra)
        last_error = "no attempt"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(0.5 * 2 ** (attempt - 1), 8.0))
            try:
                with self._slots:
                    response = self._http.post("/chat/completions", json=body)
            except httpx.TimeoutException as exc:
                last_error = f"timed out ({type(exc).__name__})"
                continue
            except httpx.TransportError as exc:
                last_error = f"unreachable ({type(exc).__name__}: {exc})"
                continue
            if response.status_code in RETRY_STATUS:
                last_error = f"HTTP {response.status_code}: {_error_text(response)}"
                continue
            if response.status_code in CONFIG_STATUS:
                raise ModelServerUnavailable(
                    f"{self.base_url} refused us (HTTP {response.status_code}: "
                    f"{_error_text(response)}); check MEDREGA_MLLM_* settings"
                )
            if response.status_code >= 400:
                raise ModelAnswerInvalid(
                    f"request refused with HTTP {response.status_code}: {_error_text(response)}"
                )
            return _content(response)
        raise ModelServerUnavailable(
            f"{self.base_url} {last_error} after {self.retries + 1} attempt(s)"
        )


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            return str(body["error"].get("message", ""))[:300]
    except ValueError:
        pass
    return response.text[:300]


def _content(response: httpx.Response) -> str:
    try:
        body = response.json()
        content = body["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ModelAnswerInvalid(
            f"not a chat-completions response ({type(exc).__name__}): {response.text[:200]!r}"
        ) from exc
    if isinstance(content, list):  # some servers answer with content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        raise ModelAnswerInvalid(f"answer content is {type(content).__name__}, not text")
    return content
