import pytest

from rsa_service.core import answers
from rsa_service.core.answers import cluster, equivalent, extract_boxed, majority, normalise


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so \boxed{42}.", "42"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"nested \boxed{\{1, \{2\}\}} end", r"\{1, \{2\}\}"),
        (r"\boxed{a_{n}^{2}}", "a_{n}^{2}"),
        (r"first \boxed{1} then \boxed{2}", "2"),
        (r"done \boxed{7} then cut \boxed{8", "7"),
        (r"only unclosed \boxed{8", None),
        (r"\boxed 5", "5"),
        (r"$\boxed 12$ ok", "12"),
        (r"\fbox{3}", "3"),
        (r"\boxed {  9 }", "9"),
        ("no box here", None),
        (r"\boxed{}", None),
    ],
)
def test_extract(text: str, expected: str | None) -> None:
    assert extract_boxed(text) == expected


def test_normalise() -> None:
    assert normalise(r" $\dfrac{1}{2}$. ") == r"\frac{1}{2}"
    assert normalise(r"90^\circ") == "90"
    assert normalise(r"\text{ 12 }") == "12"
    assert normalise("1,000") == "1000"
    assert normalise(r"\left( 1, 2 \right)") == "(1, 2)"
    assert normalise("(1,2)") == "(1,2)"


def test_thousands_separators_only_inside_a_number() -> None:
    assert normalise("12,345,678") == "12345678"
    assert normalise("100, 200") == "100, 200"
    assert normalise("100 , 200") == "100, 200"
    assert not equivalent("100, 200", "100200")
    assert [members for _, members in cluster(["100, 200", "100200", "100,200"])] == [[0], [1, 2]]


def test_equivalence_uses_math() -> None:
    assert equivalent(r"\frac{1}{2}", "0.5")
    assert equivalent(r"\sqrt{4}", "2")
    assert not equivalent("70", "71")


def test_majority_clusters_and_breaks_ties_by_first_seen() -> None:
    assert majority(["0.5", r"\frac12", "3", None, "3", r"\frac{1}{2}"]) == ("0.5", 3)
    assert majority(["b", "a", "a", "b"]) == ("b", 2)
    assert majority([None, None]) == (None, 0)
    assert [members for _, members in cluster(["1", None, "2", "1"])] == [[0, 3], [2]]


def test_warm_up_builds_the_parser_before_any_job() -> None:
    answers._parsed.cache_clear()
    answers.warm_up()
    assert answers._parsed.cache_info().currsize == 2  # "1" and "1.0" went through math-verify's parser
