"""Final-answer extraction and majority voting with answer equivalence.

Extraction takes the last *balanced* `\\boxed{...}` (also `\\fbox{...}` and the brace-less `\\boxed 42`); an
unclosed box, as a truncated trace leaves, is skipped in favour of the last complete one. Equivalence uses
math-verify when it is installed (so `\\frac12`, `0.5` and `1/2` agree), else normalised string equality.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Sequence
from functools import lru_cache

log = logging.getLogger(__name__)

_BOX = re.compile(r"\\(?:boxed|fbox)\s*")
_NORMALISE = (
    (re.compile(r"\\(?:left|right)(?=[()\[\]|.\\])"), ""),
    (re.compile(r"\\[dt]frac"), r"\\frac"),
    (re.compile(r"\\[,;:! ]"), ""),
    (re.compile(r"\^\s*\{?\\circ\}?"), ""),
    (re.compile(r"\\text\{\s*([^{}]*?)\s*\}"), r"\1"),
    (re.compile(r"\\mathrm\{\s*([^{}]*?)\s*\}"), r"\1"),
    (re.compile(r"\s*,\s+"), ", "),  # a comma before a space separates items: keep it a list, not one number
    (re.compile(r"(?<!,)\s+|(?<=,\s)\s+"), ""),
)


def _balanced(text: str, open_at: int) -> int | None:
    """Index just past the brace that closes the one at `open_at`, or None if it never closes."""
    depth = 0
    for index in range(open_at, len(text)):
        char = text[index]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return index + 1
    return None


def _box_content(text: str, start: int) -> str | None:
    if start < len(text) and text[start] == "{":
        end = _balanced(text, start)
        return None if end is None else text[start + 1 : end - 1]
    match = re.match(r"[^\s$]+", text[start:])
    return match.group(0) if match else None


def extract_boxed(text: str) -> str | None:
    """The content of the last complete box in `text`, or None."""
    for match in reversed(list(_BOX.finditer(text))):
        content = _box_content(text, match.end())
        if content is not None and content.strip():
            return content.strip()
    return None


def normalise(answer: str) -> str:
    """A canonical spelling for display and string equality: no spaces, `$`, sizing, units of degrees."""
    text = answer.replace("$", "").strip()
    for pattern, replacement in _NORMALISE:
        text = pattern.sub(replacement, text)
    text = text.rstrip(".")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+", text):  # thousands separators only inside one number
        text = text.replace(",", "")
    return text


@lru_cache(maxsize=4096)
def _parsed(answer: str) -> object:
    from math_verify import parse

    return parse(f"${answer}$", parsing_timeout=_timeout())  # type: ignore[arg-type]


def _timeout() -> int | None:
    # math-verify's timeouts use SIGALRM, which only the main thread may set.
    return 5 if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=4096)
def _math_verify_equal(a: str, b: str) -> bool:
    """Cached like `_parsed`: a job compares the same few answers every round, each pair a sympy call."""
    from math_verify import verify

    return bool(verify(_parsed(a), _parsed(b), timeout_seconds=_timeout()))


def _not_timeout_notice(record: logging.LogRecord) -> bool:
    # Off the main thread we must run without math-verify's SIGALRM timeout; it warns on every call.
    return not record.getMessage().startswith("Timeout is disabled")


@lru_cache(maxsize=1)
def default_equivalence() -> Callable[[str, str], bool]:
    """math-verify when importable, else exact equality of normalised strings."""
    try:
        import math_verify  # noqa: F401
    except ImportError:
        log.info("math-verify not installed: answers are compared as normalised strings")
        return str.__eq__
    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addFilter(_not_timeout_notice)
    return lambda a, b: a == b or _math_verify_equal(a, b)


def warm_up() -> None:
    """Load the answer checker now: math-verify's first use imports sympy and builds its LaTeX parser (a
    noticeable pause), which a long-running process should pay at start rather than in the middle of its first job."""
    equivalent("1", "1.0")


def equivalent(a: str, b: str) -> bool:
    return default_equivalence()(normalise(a), normalise(b))


def cluster(answers: Sequence[str | None]) -> list[tuple[str, list[int]]]:
    """Group equivalent answers: (representative, member indices), in order of first appearance.

    The representative is the first spelling seen; missing answers (None) belong to no cluster.
    """
    same = default_equivalence()
    clusters: list[tuple[str, list[int]]] = []
    for index, answer in enumerate(answers):
        if answer is None:
            continue
        key = normalise(answer)
        for representative, members in clusters:
            if same(representative, key):
                members.append(index)
                break
        else:
            clusters.append((key, [index]))
    return clusters


def majority(answers: Sequence[str | None]) -> tuple[str | None, int]:
    """The most common answer up to equivalence and its count; ties go to the answer seen first."""
    best: tuple[str | None, int] = (None, 0)
    for representative, members in cluster(answers):
        if len(members) > best[1]:
            best = (representative, len(members))
    return best
