import pytest
from pydantic import ValidationError

from rsa_service.core.params import Limits, RSAParams, check_problem


def test_defaults_are_the_reports_deployment_setting() -> None:
    params = RSAParams()
    assert (params.rounds, params.population, params.subset) == (2, 16, 4)
    assert (params.trace_tokens, params.tail_tokens, params.final_tokens) == (16_384, 4_096, 40_960)
    assert params.stages == 3
    assert params.max_tokens_for(0) == 16_384 and params.max_tokens_for(2) == 40_960


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"population": 4, "subset": 5}, "subset (K=5) must be at most population (N=4)"),
        ({"trace_tokens": 100, "tail_tokens": 200}, "tail_tokens (τ=200) must be at most trace_tokens (β=100)"),
        ({"population": 0}, "greater than 0"),
        ({"rounds": -1}, "greater than or equal to 0"),
        ({"select": "best"}, "'vote', 'aggregate' or 'sample'"),
        ({"tail_source": "words"}, "'reasoning', 'answer', 'hybrid' or 'full'"),
        ({"select": "aggregate", "rounds": 0}, "select=aggregate needs rounds (T) of at least 1"),
        ({"select": "aggregate", "population": 4, "final_n": 5}, "final_n (5) must be at most population (N=4)"),
        (
            {"population": 8, "straggler_policy": "quorum", "quorum": 0.25},
            "quorum (0.25 of N=8 = 2 traces) must leave at least K=4 survivors",
        ),
        ({"nonsense": 1}, "Extra inputs are not permitted"),
    ],
)
def test_bad_parameters_name_the_field(fields: dict, fragment: str) -> None:
    with pytest.raises(ValidationError) as caught:
        RSAParams(**fields)
    assert fragment in str(caught.value)


def test_t0_final_budget_applies_to_round_zero() -> None:
    params = RSAParams(rounds=0, trace_tokens=100, tail_tokens=50, final_tokens=300)
    assert params.stages == 1 and params.max_tokens_for(0) == 300


def test_full_chain_rsa_allows_tau_equal_beta() -> None:
    assert RSAParams(trace_tokens=8192, tail_tokens=8192).tail_tokens == 8192


def test_operator_limits() -> None:
    RSAParams(population=32, rounds=8).check_limits()
    with pytest.raises(ValueError, match=r"population \(65\) is over the limit of 64"):
        RSAParams(population=65).check_limits()
    with pytest.raises(ValueError, match=r"rounds \(3\) is over the limit of 2"):
        RSAParams(rounds=3).check_limits(Limits(max_rounds=2))


def test_problem_checks() -> None:
    assert check_problem("  2+2?  ") == "2+2?"
    with pytest.raises(ValueError, match="problem: must not be empty"):
        check_problem(" \n ")
    with pytest.raises(ValueError, match="problem: 11 characters is over the limit of 10"):
        check_problem("x" * 11, Limits(max_problem_chars=10))


def test_one_rule_for_the_survivors_a_round_needs() -> None:
    assert RSAParams(population=8).required_survivors(0) == 4  # waiting for every trace: half must succeed
    quorum = RSAParams(population=8, subset=2, straggler_policy="quorum", quorum=0.25)
    assert quorum.required_survivors(1) == 2  # the quorum that cuts stragglers is the one that must succeed
    assert RSAParams(population=10, subset=2, straggler_policy="quorum", quorum=0.7).required_survivors(0) == 7
    assert RSAParams(population=8, rounds=0, straggler_policy="quorum", quorum=0.25).required_survivors(0) == 2


def test_aggregate_final_stage_is_final_n_aggregations() -> None:
    params = RSAParams(population=8, rounds=2, select="aggregate", final_n=3)
    assert [params.population_of(r) for r in range(3)] == [8, 8, 3]
    assert params.total_generations == 19 and params.final_sampling(2) and not params.final_sampling(1)
    assert RSAParams(population=8, rounds=2).total_generations == 24
