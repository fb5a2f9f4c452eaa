"""Token-exact tails: the Markovian state that one round hands to the next.

A tail is the last τ tokens of a trace, measured with the model's own tokenizer. The cut is then moved *forward*
(never backward, so the tail never exceeds τ) to the nearest clean boundary: a line break, else a sentence end,
else a space. Offsets are Python string indices, so a cut can never split a multi-byte character.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator, Sequence
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

# How far past the token cut we look for a clean boundary: a tenth of the tail, at least a short line's worth,
# never more than half the tail. A tail loses at most this much to boundary alignment.
BOUNDARY_WINDOW_SHARE = 0.1
BOUNDARY_WINDOW_MIN_CHARS = 64
# Tokens a completion spends outside its reasoning and answer: `<think>`, `</think>` and the line breaks by them.
REASONING_DELIMITER_TOKENS = 4
_SENTENCE_END = re.compile(r"[.!?;:](?:\s+)")
_SPACE = re.compile(r"\s+")


class Tail(BaseModel):
    """A trace's tail. `tokens` counts the kept text (exact where token offsets are known; where only counts or
    the generation's usage are, an upper bound); `source_tokens` the whole trace."""

    model_config = ConfigDict(frozen=True)

    text: str
    tokens: int
    source_tokens: int

    @property
    def trimmed(self) -> bool:
        return self.tokens < self.source_tokens


def clean_boundary(text: str, cut: int) -> int:
    """Move `cut` forward to just after the nearest line break, sentence end or space within the window."""
    if cut <= 0:
        return 0
    if text[cut - 1] == "\n":
        return cut
    remaining = len(text) - cut
    limit = cut + min(max(int(remaining * BOUNDARY_WINDOW_SHARE), BOUNDARY_WINDOW_MIN_CHARS), remaining // 2)
    window = text[cut:limit]
    newline = window.find("\n")
    if newline >= 0:
        return cut + newline + 1
    for pattern in (_SENTENCE_END, _SPACE):
        match = pattern.search(window)
        if match:
            return cut + match.end()
    return cut


def tail_from_offsets(text: str, starts: Sequence[int], max_tokens: int) -> Tail:
    """Cut `text` to its last `max_tokens` tokens, given each token's start offset (ascending)."""
    total = len(starts)
    if total <= max_tokens:
        return Tail(text=text, tokens=total, source_tokens=total)
    first = total - max_tokens
    while 0 < first < total and starts[first] == starts[first - 1]:
        first += 1  # byte-level tokenizers give every token of one character the same start: skip the character
    cut = clean_boundary(text, starts[first]) if first < total else len(text)
    kept = total - _first_at_or_after(starts, cut)
    return Tail(text=text[cut:], tokens=kept, source_tokens=total)


def fitting_tail(text: str, starts: Callable[[str], list[int]], max_tokens: int) -> Tail:
    """The tail of `tail_from_offsets`, counted again on its own, as the next prompt will see it.

    A cut inside a multi-token character (byte-level tokenizers give all its tokens one start) or across a merge
    the suffix no longer has can add a token or two; the budget shrinks until the tail fits. `starts` gives each
    token's start offset (a tokenizer's, or `approximate_token_starts`).
    """
    offsets = starts(text)
    budget = max_tokens
    while True:
        tail = tail_from_offsets(text, offsets, budget)
        tokens = len(starts(tail.text)) if tail.trimmed else tail.tokens
        if tokens <= max_tokens or budget <= 1:
            return Tail(text=tail.text, tokens=tokens, source_tokens=len(offsets))
        budget -= tokens - max_tokens


def _first_at_or_after(starts: Sequence[int], offset: int) -> int:
    lo, hi = 0, len(starts)
    while lo < hi:
        mid = (lo + hi) // 2
        if starts[mid] < offset:
            lo = mid + 1
        else:
            hi = mid
    return lo


def suffix_search(length: int, total_tokens: int, max_tokens: int) -> Generator[int, int, int]:
    """Find an offset whose suffix fits `max_tokens`, for tokenizers that count but give no offsets.

    A coroutine so the search stays pure: it yields a candidate offset, the caller sends back the token count of
    `text[offset:]` (counted however it likes, e.g. over HTTP), and it returns the answer. Token counts grow
    almost linearly with text length, so interpolating on them (regula falsi, with a bisection step whenever one
    side stalls) lands within a few counts. Any fitting suffix within `tolerance` tokens of the budget is taken,
    since the cut then moves to a clean boundary anyway (up to a tenth of the tail); interpolation aims at the
    middle of that band, so the first count usually lands in it.
    """
    tolerance = max(1, max_tokens // 32)
    aim = max_tokens - tolerance // 2
    low, low_count = 0, total_tokens  # does not fit
    high, high_count = length, 0  # fits
    stalled = 0
    while high - low > 1:
        if stalled >= 2:
            guess = (low + high) // 2
        else:
            share = (low_count - aim) / max(low_count - high_count, 1)
            guess = min(high - 1, max(low + 1, low + round((high - low) * share)))
        count = yield guess
        if count <= max_tokens:
            stalled = stalled + 1 if high_count and count == high_count else 0
            high, high_count = guess, count
            if count >= max_tokens - tolerance:
                break
        else:
            stalled = stalled + 1 if low_count == count else 0
            low, low_count = guess, count
    return high


class _Encoding(Protocol):
    @property
    def offsets(self) -> list[tuple[int, int]]: ...


class OffsetTokenizer(Protocol):
    """What `token_starts` needs of a `tokenizers.Tokenizer` (core imports no tokenizer library)."""

    def encode_batch(self, input: Sequence[Any], /, *, add_special_tokens: bool = ...) -> Sequence[_Encoding]: ...


def token_starts(tokenizer: OffsetTokenizer, text: str) -> list[int]:
    """Each token's start offset in `text`.

    Through `encode_batch` of one text, not `encode`: the same work, but it releases the GIL, so tokenizing a long
    trace on a worker thread does not stall the event loop for the whole encode.
    """
    (encoding,) = tokenizer.encode_batch([text], add_special_tokens=False)
    return [start for start, _ in encoding.offsets]


_APPROX_TOKEN = re.compile(r"\s*(?:[A-Za-z]{1,4}|\d|[^\sA-Za-z\d])", re.UNICODE)


def estimate_part_tokens(part: str, rest: str, total_tokens: int) -> int:
    """Tokens of `part`, one of the two parts (reasoning, answer) of a completion of `total_tokens` tokens.

    It seeds a count-only suffix search, which takes one count when the estimate is within a few tokens. When the
    rest is the shorter part (the usual case: the reasoning's tail beside a short answer), the completion's tokens
    less the rest's approximate count and the delimiters come within 0-3 tokens on the test tokenizer and on a
    byte-level BPE; the part's share of the characters was 2-11 tokens over (the delimiters and the answer's denser
    tokens go to the part). Otherwise that share is the better guess.
    """
    if len(rest) <= len(part):
        return max(total_tokens - len(approximate_token_starts(rest)) - REASONING_DELIMITER_TOKENS, 0)
    return total_tokens * len(part) // max(len(part) + len(rest), 1)


def approximate_token_starts(text: str) -> list[int]:
    """Approximate token starts when no tokenizer is available: up to four letters, one digit or one symbol each.

    Sub-word tokenizers for English average about four characters a token and split digits singly, so this errs
    towards more tokens than the real count, which keeps tails within budget. Callers warn when they use it.
    """
    return [m.start() for m in _APPROX_TOKEN.finditer(text)]
