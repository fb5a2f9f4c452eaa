import re

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from rsa_service.core.tails import (
    REASONING_DELIMITER_TOKENS,
    approximate_token_starts,
    clean_boundary,
    estimate_part_tokens,
    fitting_tail,
    suffix_search,
    tail_from_offsets,
    token_starts,
)


def char_starts(text: str) -> list[int]:
    return list(range(len(text)))


def test_short_trace_is_kept_whole() -> None:
    tail = tail_from_offsets("abc", char_starts("abc"), 5)
    assert (tail.text, tail.tokens, tail.source_tokens, tail.trimmed) == ("abc", 3, 3, False)


def test_cut_moves_forward_to_a_line_break_and_stays_within_budget() -> None:
    text = "first line of work\nsecond line\nthird line, the end"
    tail = tail_from_offsets(text, char_starts(text), 25)
    assert tail.text == "third line, the end"
    assert tail.tokens == len(tail.text) <= 25 and tail.trimmed


def test_cut_prefers_sentence_end_then_space() -> None:
    text = "alpha beta. gamma delta epsilon zeta eta theta iota kappa"
    cut = clean_boundary(text, 3)
    assert text[cut:].startswith("gamma")
    assert clean_boundary("ab" + "x" * 50 + " end", 2) == 2  # no boundary inside the window: exact cut


def _char_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return tokenizer


def test_token_starts_are_the_tokenizers_string_offsets() -> None:
    text = "第一步：计算 ∑ 😀😀 结果是 42。"
    tokenizer = _char_tokenizer()
    assert token_starts(tokenizer, text) == [start for start, _ in tokenizer.encode(text).offsets]
    assert token_starts(tokenizer, text) == list(range(len(text)))  # Python string indices, not bytes


def test_multibyte_text_is_never_split() -> None:
    text = "第一步：计算 ∑ 😀😀 结果是 42。\n最后答案 😀 是 42"
    starts = token_starts(_char_tokenizer(), text)
    for budget in range(1, len(starts) + 2):
        tail = tail_from_offsets(text, starts, budget)
        assert text.endswith(tail.text)
        assert tail.tokens <= budget
        tail.text.encode("utf-8")  # a split surrogate or character would not encode


def _search(text: str, budget: int, count) -> tuple[int, int]:
    search = suffix_search(len(text), count(text), budget)
    calls = 0
    offset = next(search)
    try:
        while True:
            calls += 1
            offset = search.send(count(text[offset:]))
    except StopIteration as done:
        return done.value, calls


@pytest.mark.parametrize("budget", [1, 3, 50, 200, 999])
def test_suffix_search_fits_the_budget_in_few_counts(budget: int) -> None:
    text = " ".join(f"w{i % 97}" + ("!" * (i % 5)) for i in range(1000))

    def count(fragment: str) -> int:
        return len(approximate_token_starts(fragment))

    start, calls = _search(text, budget, count)
    assert count(text[start:]) <= budget
    assert count(text[start:]) >= budget - max(1, budget // 32) or count(text[start - 1 :]) > budget
    assert calls <= 12


def test_suffix_search_on_a_short_text() -> None:
    text = "one two three four five six"

    def count(fragment: str) -> int:
        return len(fragment.split())

    start, _ = _search(text, 3, count)
    assert text[start:].split() == ["four", "five", "six"]


@pytest.mark.parametrize("text", ["", "x", "Hello, world! 12345 — ünïcødé"])
def test_approximate_tokens_over_count_words(text: str) -> None:
    starts = approximate_token_starts(text)
    assert starts == sorted(starts)
    assert len(starts) >= len(text.split())


def test_tokens_sharing_a_start_are_never_over_budget() -> None:
    text = "ab😀cd"
    starts = [0, 1, 2, 2, 2, 3, 4]  # byte-level BPE: the emoji is three tokens that all start at 2
    for budget in range(1, 8):
        tail = tail_from_offsets(text, starts, budget)
        assert tail.tokens <= budget and text.endswith(tail.text)


def test_a_tail_counted_again_on_its_own_still_fits() -> None:
    """A tokenizer that spends more tokens on a text's first word (as byte-level BPE can at a new start): the
    budget shrinks until the tail, counted on its own, fits."""

    def starts(text: str) -> list[int]:
        words = [m.start() for m in re.finditer(r"\S+", text)]
        return words[:1] * 3 + words[1:]  # the first word costs three tokens

    text = " ".join(f"w{i}" for i in range(100))
    tail = fitting_tail(text, starts, 20)
    assert tail.tokens == len(starts(tail.text)) <= 20
    assert tail.source_tokens == len(starts(text)) == 102
    uncounted = tail_from_offsets(text, starts(text), 20)  # what the cut alone keeps: over budget on its own
    assert len(starts(uncounted.text)) > 20


def test_a_part_of_a_completion_is_estimated_from_its_usage() -> None:
    reasoning = "Consider the sum of the first terms. " * 30
    answer = "The final answer is \\boxed{42}."
    rest = len(approximate_token_starts(answer))
    # The shorter rest is counted approximately and taken off with the delimiters: exact when the model agrees.
    assert estimate_part_tokens(reasoning, answer, 300 + rest + REASONING_DELIMITER_TOKENS) == 300
    # The part beside a longer rest: its share of the characters.
    assert estimate_part_tokens(answer, reasoning, 330) == 330 * len(answer) // (len(answer) + len(reasoning))
    assert estimate_part_tokens(reasoning, answer, 3) == 0
