"""A job's progress as status reads show it: kept in the job hash by the commit and round scripts, the same as the
event stream tells; folded from the events for jobs whose hash does not account for every committed step."""

from __future__ import annotations

from rsa_service.api.views import PROGRESS_FIELDS, progress_from_events, progress_many, read_job
from rsa_service.core.steps import StepResult, Usage
from rsa_service.jobs.store import JobStore
from rsa_service.wire import Progress
from tests.jobs.helpers import job_spec

TENANT = "t_progress"


async def _running_job(store: JobStore) -> tuple[str, int]:
    job_id = await store.create(job_spec("toy"), tenant=TENANT)
    return job_id, (await store.claim(job_id, "w1", lease_ms=10_000)).fence


async def _commit(store: JobStore, job_id: str, fence: int, round_index: int, slot: int, tokens: int) -> bool:
    """As the runner commits a step: the step and its event."""
    step = StepResult(round=round_index, slot=slot, usage=Usage(prompt_tokens=7, completion_tokens=tokens))
    event = {"round": round_index, "slot": slot, "status": "ok", "completion_tokens": tokens}
    return await store.commit(job_id, fence, step, event)


async def _folded(store: JobStore, job_id: str) -> Progress:
    record = await store.get(job_id)
    return progress_from_events(record.spec, await store.redis.xrange(store.keys.job(job_id).events))


async def test_kept_progress_is_what_the_events_tell(store: JobStore) -> None:
    job_id, fence = await _running_job(store)
    queued = (await read_job(store, job_id, TENANT)).progress
    assert queued == Progress(stages=3, steps_total=12)  # nothing committed: nothing kept, nothing to fold
    for slot, tokens in enumerate((10, 20, 30, 40)):
        assert await _commit(store, job_id, fence, 0, slot, tokens)
    assert not await _commit(store, job_id, fence, 0, 3, 99)  # a repeated commit is not counted again
    await store.emit(job_id, fence, "round", {"round": 0, "tokens": {"prompt_tokens": 28, "completion_tokens": 100}})
    await store.emit(job_id, fence, "note", {"tokens": {"prompt_tokens": 1000}})  # not a round: not counted
    assert await _commit(store, job_id, fence, 1, 0, 5)
    kept = await store.fields([job_id], PROGRESS_FIELDS)
    assert kept == [({"progress_steps": "5", "progress_round": "1", "progress_completion_tokens": "105",
                      "progress_prompt_tokens": "28"}, 5)]  # fmt: skip
    progress = (await read_job(store, job_id, TENANT)).progress
    assert progress == await _folded(store, job_id)
    assert progress == Progress(
        round=1, stages=3, steps_done=5, steps_total=12, completion_tokens=105, prompt_tokens=28
    )
    await store.redis.xtrim(store.keys.job(job_id).events, maxlen=0)
    assert (await read_job(store, job_id, TENANT)).progress == progress  # read from the hash, not the events


async def test_a_job_begun_before_progress_was_kept_is_folded_from_its_events(store: JobStore) -> None:
    legacy, fence = await _running_job(store)
    for slot in range(2):
        await _commit(store, legacy, fence, 0, slot, 10)
    await store.redis.hdel(store.keys.job(legacy).meta, *PROGRESS_FIELDS)  # as the older commit script left it
    await _commit(store, legacy, fence, 0, 2, 10)  # this release's script does not start counting midway
    assert await store.fields([legacy], PROGRESS_FIELDS) == [({}, 3)]
    kept, kept_fence = await _running_job(store)
    await _commit(store, kept, kept_fence, 0, 0, 4)
    expected = await _folded(store, legacy)
    assert expected.steps_done == 3 and expected.completion_tokens == 30
    assert (await read_job(store, legacy, TENANT)).progress == expected
    records = [await store.get(job_id) for job_id in (legacy, kept)]
    assert await progress_many(store, records) == [expected, await _folded(store, kept)]


async def test_progress_behind_the_committed_steps_is_folded(store: JobStore) -> None:
    """A worker of an older release committing to a job this release began counting: the count falls behind the
    steps hash, so the reader trusts the events instead."""
    job_id, fence = await _running_job(store)
    await _commit(store, job_id, fence, 0, 0, 10)
    keys = store.keys.job(job_id)
    await store.redis.hset(keys.steps, "r0:s1", StepResult(round=0, slot=1).model_dump_json())
    await store.redis.xadd(keys.events, {"type": "step", "data": '{"round": 0, "slot": 1, "completion_tokens": 6}'})
    progress = (await read_job(store, job_id, TENANT)).progress
    assert progress.steps_done == 2 and progress.completion_tokens == 16
