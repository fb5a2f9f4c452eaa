"""Separate a completion's reasoning from its answer, however the server delivered them.

Servers differ: vLLM returns a separate field (`reasoning_content`, renamed `reasoning`), others inline
`<think>...</think>`, and when the chat template opens `<think>` in the prompt the completion holds only the closing
tag. A completion cut by the token budget inside its reasoning has no closing tag at all.
"""

from __future__ import annotations

from typing import Literal

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

TailSource = Literal["reasoning", "answer", "hybrid", "full"]


def split_reasoning(text: str, *, thinking_opened: bool = False) -> tuple[str, str]:
    """Return (reasoning, answer) of a completion with inline think tags.

    `thinking_opened` says the prompt already opened `<think>`, so text before any `</think>` is reasoning even
    when the closing tag never came (a trace truncated mid-thought).
    """
    stripped = text.lstrip()
    opened = thinking_opened or stripped.startswith(THINK_OPEN)
    if opened and stripped.startswith(THINK_OPEN):
        stripped = stripped[len(THINK_OPEN) :]
    close = stripped.find(THINK_CLOSE)
    if close >= 0:
        return stripped[:close].strip(), stripped[close + len(THINK_CLOSE) :].strip()
    if opened:
        return stripped.strip(), ""
    return "", text.strip()


def full_text(reasoning: str, answer: str) -> str:
    """The whole completion, reasoning then answer; no think tag, which would read as a chat-template token."""
    return "\n\n".join(part for part in (reasoning, answer) if part.strip())


def tail_source_text(reasoning: str, answer: str, source: TailSource, *, finished: bool) -> str:
    """The text a tail is cut from.

    `reasoning` is the ZAYA report's choice; `hybrid` takes the answer of a finished trace (it holds the worked
    solution) and the reasoning of a truncated one; `full` is the whole completion, reasoning then answer, the
    original RSA paper's candidate (with τ = β it is never cut, since β bounds both parts together). A trace that
    produced no reasoning at all (a model that does not think, or a server that hides it) falls back to its
    answer, and vice versa, so a candidate is never empty while the trace has any text.
    """
    if source == "full":
        return full_text(reasoning, answer)
    if source == "answer" or (source == "hybrid" and finished):
        preferred, fallback = answer, reasoning
    else:
        preferred, fallback = reasoning, answer
    return preferred if preferred.strip() else fallback
