"""Prompt templates: the R1-style system prompt and chat-message builders.

Messages follow the HF chat format the VLM processors accept:
  [{"role": "system", "content": str},
   {"role": "user", "content": [{"type": "image"}, ..., {"type": "text", "text": question}]}]
Image parts come before the question (how Qwen2.5-VL and most VLMs were trained) and refer, in
order, to `Prompt.images`.
"""
from __future__ import annotations

from typing import Any, Optional

R1_SYSTEM_PROMPT = (
    "You are a helpful assistant that answers questions about images. "
    "First think about the question step by step inside <think> </think> tags, "
    "then give only the final answer inside <answer> </answer> tags, "
    "for example: <think>reasoning here</think><answer>final answer here</answer>"
)

# Datasets in the LLaVA / verl convention mark image positions inline with this token.
IMAGE_PLACEHOLDER = "<image>"


def format_response(reasoning: str, answer: Any) -> str:
    """A response in the R1 format: `<think>reasoning</think><answer>answer</answer>`."""
    return f"<think>{reasoning}</think><answer>{answer}</answer>"


def text_to_parts(text: str, num_images: int) -> list[dict[str, Any]]:
    """Content parts for one user turn.

    If `text` contains `<image>` placeholders they mark where the images go (their count must
    then equal num_images — checked by the caller); otherwise all images come first.
    """
    if IMAGE_PLACEHOLDER in text:
        parts: list[dict[str, Any]] = []
        for i, chunk in enumerate(text.split(IMAGE_PLACEHOLDER)):
            if i > 0:
                parts.append({"type": "image"})
            if chunk.strip():
                parts.append({"type": "text", "text": chunk.strip()})
        return parts
    parts = [{"type": "image"} for _ in range(num_images)]
    parts.append({"type": "text", "text": text})
    return parts


def build_messages(
    question: str,
    num_images: int = 1,
    system_prompt: Optional[str] = R1_SYSTEM_PROMPT,
) -> list[dict[str, Any]]:
    """Chat messages for one question about `num_images` images.

    system_prompt=None leaves the system turn out (the chat template then adds its default).
    """
    messages: list[dict[str, Any]] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": text_to_parts(question, num_images)})
    return messages


def with_system_prompt(messages: list[dict[str, Any]], system_prompt: Optional[str]) -> list:
    """`messages` with `system_prompt` prepended, unless empty or a system turn already exists
    (a dataset's own system prompt wins: it was written for that data)."""
    if not system_prompt or (messages and messages[0].get("role") == "system"):
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]


def message_text(message: dict[str, Any]) -> str:
    """The text of one message (text parts joined by newlines; image parts contribute none)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    parts = [p for p in content or [] if isinstance(p, dict) and p.get("type") == "text"]
    return "\n".join(p["text"] for p in parts if p.get("text"))


def count_image_parts(messages: list[dict[str, Any]]) -> int:
    """Number of image placeholders across all messages."""
    n = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            n += sum(1 for p in content if isinstance(p, dict) and p.get("type") == "image")
    return n


def prompt_text(prompt_or_messages: Any, *, include_system: bool = True) -> str:
    """Plain text of a Prompt (or a messages list): for token estimates, logs and checks."""
    messages = getattr(prompt_or_messages, "messages", prompt_or_messages)
    return "\n".join(
        message_text(m)
        for m in messages
        if include_system or m.get("role") != "system"
    )
