"""What a chat request asks: the last user message's text and the image it is about.

MedRegA conversations are one image and one question; multi-turn clients resend the history, so
the question is the LAST user message and the image is that message's own image or else the
most recent image earlier in the conversation.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.medrega_server.schemas import ChatMessage, ImagePart, TextPart
from services.medrega_server.tokens import IMAGE_TOKENS, count_tokens


class ConversationError(ValueError):
    """The messages don't hold a question (and an image); the message goes back to the client."""


@dataclass(frozen=True)
class Question:
    text: str  # the last user message's text parts, joined
    image_url: str | None  # its image, else the most recent image before it
    prompt_tokens: int  # every message's text and images (see tokens.py)


def _texts(message: ChatMessage) -> list[str]:
    if message.content is None:
        return []
    if isinstance(message.content, str):
        return [message.content]
    return [part.text for part in message.content if isinstance(part, TextPart)]


def _image_urls(message: ChatMessage) -> list[str]:
    if not isinstance(message.content, list):
        return []
    return [
        part.image_url if isinstance(part.image_url, str) else part.image_url.url
        for part in message.content
        if isinstance(part, ImagePart)
    ]


def read_question(messages: list[ChatMessage]) -> Question:
    users = [i for i, m in enumerate(messages) if m.role == "user"]
    if not users:
        raise ConversationError("the messages hold no user message")
    last = users[-1]
    text = "\n".join(_texts(messages[last])).strip()
    if not text:
        raise ConversationError("the last user message has no text")
    image_url = next(
        (urls[-1] for m in reversed(messages[: last + 1]) if (urls := _image_urls(m))), None
    )
    prompt_tokens = sum(
        sum(count_tokens(t) for t in _texts(m)) + IMAGE_TOKENS * len(_image_urls(m))
        for m in messages
    )
    return Question(text, image_url, prompt_tokens)
