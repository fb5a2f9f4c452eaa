"""Slots start as soon as their candidates are committed: a round does not wait on a member it does not need, and
every prompt is the one the round's end would have built."""

from __future__ import annotations

from rsa_service.core.plan import choose_subset, generation_seed
from rsa_service.jobs.store import JobStore
from tests.jobs.helpers import finished, job_spec, running
from tests.modelserver import ModelServerConfig, serve_in_thread

SEED = 7
PARAMS = {"population": 6, "subset": 2, "rounds": 1, "seed": SEED}
SLOW_S = 1.5


def _slowest_needed_by_fewest() -> tuple[int, list[int]]:
    """The round-0 slot the fewest round-1 prompts show, and the round-1 slots that do not show it."""
    choices = [choose_subset(SEED, 1, slot, range(6), 2) for slot in range(6)]
    slow = min(range(6), key=lambda member: sum(member in chosen for chosen in choices))
    return slow, [slot for slot, chosen in enumerate(choices) if slow not in chosen]


async def _run(store: JobStore, config: ModelServerConfig, **params: object) -> list[dict]:
    with serve_in_thread(config) as server:
        job_id = await store.create(job_spec(server.base_url, **(PARAMS | params)))
        async with running(store):
            assert await finished(store, job_id) == "completed"
        return server.requests()


async def test_a_slot_starts_before_its_round_ends_with_the_same_prompt(store: JobStore) -> None:
    slow, independent = _slowest_needed_by_fewest()
    assert independent  # with N=6 and K=2 some round-1 slot never shows the slow member
    delay = {"delay_s": SLOW_S, "match": f'"seed":{generation_seed(SEED, 0, slow)}'}
    log = await _run(store, ModelServerConfig(faults=[delay]))
    slow_request = next(entry for entry in log if entry["fault"] is not None)
    aggregations = [entry for entry in log if "Candidate 1" in str(entry["body"])]
    early = [entry for entry in aggregations if entry["time"] < slow_request["time"] + SLOW_S]
    assert len(early) == len(independent)  # every slot that does not need the slow member went ahead of it

    # The same job without the delay sends byte-identical requests.
    undelayed = await _run(store, ModelServerConfig())
    assert sorted(entry["key"] for entry in log) == sorted(entry["key"] for entry in undelayed)


async def test_with_an_agreement_stop_rounds_still_wait_for_each_other(store: JobStore) -> None:
    slow, _ = _slowest_needed_by_fewest()
    delay = {"delay_s": SLOW_S, "match": f'"seed":{generation_seed(SEED, 0, slow)}'}
    log = await _run(store, ModelServerConfig(p_correct=0.0, faults=[delay]), stop_agreement=1.0)
    slow_request = next(entry for entry in log if entry["fault"] is not None)
    aggregations = [entry for entry in log if "Candidate 1" in str(entry["body"])]
    assert aggregations and all(entry["time"] >= slow_request["time"] + SLOW_S for entry in aggregations)
