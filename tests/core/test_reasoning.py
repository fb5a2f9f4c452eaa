import pytest

from rsa_service.core.reasoning import split_reasoning, tail_source_text


@pytest.mark.parametrize(
    ("text", "opened", "expected"),
    [
        ("<think>a b</think>The answer is 4", False, ("a b", "The answer is 4")),
        ("a b</think>\nanswer", True, ("a b", "answer")),
        ("a b</think>answer", False, ("a b", "answer")),
        ("<think>cut off mid thought", False, ("cut off mid thought", "")),
        ("cut off mid thought", True, ("cut off mid thought", "")),
        ("no thinking at all", False, ("", "no thinking at all")),
    ],
)
def test_split(text: str, opened: bool, expected: tuple[str, str]) -> None:
    assert split_reasoning(text, thinking_opened=opened) == expected


def test_tail_sources() -> None:
    assert tail_source_text("R", "A", "reasoning", finished=True) == "R"
    assert tail_source_text("R", "A", "answer", finished=False) == "A"
    assert tail_source_text("R", "A", "hybrid", finished=True) == "A"
    assert tail_source_text("R", "A", "hybrid", finished=False) == "R"
    assert tail_source_text("", "A", "reasoning", finished=True) == "A"  # hidden reasoning falls back
    assert tail_source_text("R", " ", "answer", finished=True) == "R"
    assert tail_source_text("R", "A", "full", finished=False) == "R\n\nA"  # the whole completion
    assert tail_source_text("", "A", "full", finished=True) == "A"
