"""`rsa reason` routes its stages to the operator's named backends (`RSA_BACKENDS`) and reports usage per backend."""

from __future__ import annotations

import json

from tests.jobs.helpers import SMALL_FLAGS, rsa
from tests.modelserver import AGGREGATION_MARKERS, ModelServerConfig, serve_in_thread


def test_reason_sends_round_zero_to_the_explorer_and_aggregations_to_the_synthesizer(
    cli_env: dict[str, str],
) -> None:
    with serve_in_thread(ModelServerConfig()) as small, serve_in_thread(ModelServerConfig()) as big:
        backends = {"small": f"openai:{small.base_url}", "big": f"openai:{big.base_url}"}
        env = cli_env | {"RSA_BACKENDS": json.dumps(backends)}
        flags = ["--aggregation-backend", "big", "--final-backend", "big", "--json"]
        done = rsa(["reason", "Route it. ANSWER=5", "--backend", backends["small"], *SMALL_FLAGS, *flags], env)
        on_small, on_big = small.requests(), big.requests()
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert len(on_small) == 4 and not any(m in str(e["body"]) for e in on_small for m in AGGREGATION_MARKERS)
    assert len(on_big) == 8 and all(any(m in str(e["body"]) for m in AGGREGATION_MARKERS) for e in on_big)
    by_backend = result["usage_by_backend"]
    assert set(by_backend) == {backends["small"], "big"}
    assert (
        by_backend["big"]["completion_tokens"] + by_backend[backends["small"]]["completion_tokens"]
        == (result["usage"]["completion_tokens"])
    )
