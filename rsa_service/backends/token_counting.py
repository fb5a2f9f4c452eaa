"""Counting and cutting tokens for the remote backend, with the best tokenizer available.

In order of preference: the server's own tokenize endpoint (exact, chat template included, but count-only, so
tails are found by searching over suffixes), a local `tokenizer.json` (exact, with offsets), or the documented
approximation `core.tails.approximate_token_starts` (errs towards more tokens, so tails stay within budget).
The last two share one implementation, `OffsetCounter`, which differs only in where token starts come from.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

from rsa_service.backends.base import ChatMessage
from rsa_service.core.tails import (
    Tail,
    approximate_token_starts,
    clean_boundary,
    fitting_tail,
    suffix_search,
    token_starts,
)

# Without the server's chat template we estimate it: ChatML-style templates spend about four tokens a message
# (`<|im_start|>`, the role, a newline, `<|im_end|>`) and three on the assistant header opening the reply.
MESSAGE_OVERHEAD_TOKENS = 4
GENERATION_PROMPT_TOKENS = 3
# Tokenizing this much text takes long enough to stall the event loop, so it goes to a worker thread.
THREAD_THRESHOLD_CHARS = 8192

T = TypeVar("T")


def templated_estimate(content_tokens: Sequence[int]) -> int:
    """Tokens of a chat prompt given its messages' content tokens, when the real template is unknown."""
    return sum(content_tokens) + MESSAGE_OVERHEAD_TOKENS * len(content_tokens) + GENERATION_PROMPT_TOKENS


class TokenCounter(Protocol):
    """What the remote backend needs from a tokenizer. `exact` says the counts are the model's own."""

    exact: bool

    async def count_text(self, text: str) -> int:
        """Tokens of a fragment (no special tokens)."""
        ...

    async def count_prompt(self, prompt: str) -> int:
        """Tokens a plain-completion prompt occupies (special tokens such as BOS included)."""
        ...

    async def count_messages(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens a chat prompt occupies once rendered through the chat template."""
        ...

    async def tail(self, text: str, max_tokens: int, *, tokens_hint: int | None = None) -> Tail: ...


async def _off_loop_if_long(work: Callable[..., T], text: str, *args: object) -> T:
    """`work(text, *args)`, on a worker thread when `text` is long enough that tokenizing it would stall the loop."""
    if len(text) > THREAD_THRESHOLD_CHARS:
        return await asyncio.to_thread(work, text, *args)
    return work(text, *args)


class OffsetCounter:
    """A tokenizer that gives each token's start offset: a local tokenizer.json, or the approximation."""

    def __init__(self, starts: Callable[[str], list[int]], *, exact: bool) -> None:
        self._starts = starts
        self.exact = exact

    @classmethod
    async def from_tokenizer_json(cls, path: str) -> OffsetCounter:
        from tokenizers import Tokenizer

        tokenizer = await asyncio.to_thread(Tokenizer.from_file, path)
        return cls(functools.partial(token_starts, tokenizer), exact=True)

    @classmethod
    def approximate(cls) -> OffsetCounter:
        return cls(approximate_token_starts, exact=False)

    async def count_text(self, text: str) -> int:
        return len(await _off_loop_if_long(self._starts, text))

    async def count_prompt(self, prompt: str) -> int:
        return await self.count_text(prompt)

    async def count_messages(self, messages: Sequence[ChatMessage]) -> int:
        return templated_estimate([await self.count_text(m.content) for m in messages])

    async def tail(self, text: str, max_tokens: int, *, tokens_hint: int | None = None) -> Tail:
        # Both counts in one thread hop when the text is long; offsets make the hint needless.
        return await _off_loop_if_long(fitting_tail, text, self._starts, max_tokens)


CountRequest = Callable[[dict[str, object]], Awaitable[int]]


class ServerCounter:
    """The server's tokenize endpoint. Count-only, so a tail is found by an interpolating search over suffixes;
    a cut tail's `tokens` is then the count of the suffix found, which bounds the (boundary-trimmed) text kept.

    The search runs over approximate token starts rather than characters: token density varies along a trace
    (prose, formulas, digits), and the approximation follows it, so the first count usually lands in the band.
    Given a `tokens_hint` above the budget it also skips counting the whole text: one round trip a tail
    instead of two (`benchmarks/README.md`).

    `count` takes a vLLM-style body (`prompt` + `add_special_tokens`, or `messages`) and returns the count;
    `chat_template` says the server renders `messages` itself (vLLM, SGLang) rather than only counting text
    (llama.cpp), in which case the template is estimated.
    """

    exact = True

    def __init__(self, count: CountRequest, *, chat_template: bool) -> None:
        self._count = count
        self._chat_template = chat_template

    async def count_text(self, text: str) -> int:
        return await self._count({"prompt": text, "add_special_tokens": False})

    async def count_prompt(self, prompt: str) -> int:
        return await self._count({"prompt": prompt, "add_special_tokens": True})

    async def count_messages(self, messages: Sequence[ChatMessage]) -> int:
        if self._chat_template:
            return await self._count({"messages": [m.model_dump() for m in messages]})
        return templated_estimate([await self.count_text(m.content) for m in messages])

    async def tail(self, text: str, max_tokens: int, *, tokens_hint: int | None = None) -> Tail:
        whole = None if tokens_hint is not None and tokens_hint > max_tokens else await self.count_text(text)
        if whole is not None and whole <= max_tokens:
            return Tail(text=text, tokens=whole, source_tokens=whole)
        units = await _off_loop_if_long(approximate_token_starts, text) or [0]
        counts: dict[int, int] = {}
        search = suffix_search(len(units), whole or tokens_hint or 0, max_tokens)
        unit = next(search)
        try:
            while True:
                counts[unit] = await self.count_text(text[units[unit] :])
                unit = search.send(counts[unit])
        except StopIteration as done:
            found = done.value
        if whole is None and found <= 1:  # every suffix fits: the hint overestimated, and the whole may fit too
            whole = await self.count_text(text)
            if whole <= max_tokens:
                return Tail(text=text, tokens=whole, source_tokens=whole)
        offset = units[found] if found < len(units) else len(text)
        # Moving the cut forward to a clean boundary only drops text, so the count found bounds the kept tail;
        # counting it again would cost a round trip for a figure that is only reported. Without a count of the
        # whole text, `source_tokens` is the hint.
        return Tail(
            text=text[clean_boundary(text, offset) :],
            tokens=counts.get(found, max_tokens),
            source_tokens=whole or tokens_hint or 0,
        )
