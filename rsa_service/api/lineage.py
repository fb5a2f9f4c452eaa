"""A job's lineage for the web UI and scripts: the graph of its committed steps (no texts) with math-equivalent
answer clusters, and one step in full with where its tail begins."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from fastapi import APIRouter

from rsa_service.api.errors import ApiError, problem_responses
from rsa_service.api.routes_jobs import Store, Tenant
from rsa_service.api.views import owned_record, step_record
from rsa_service.core.answers import cluster
from rsa_service.core.steps import StepResult
from rsa_service.wire import AnswerCluster, GraphNode, JobGraph, StepRecord

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def answer_clusters(steps: Sequence[StepResult]) -> tuple[list[AnswerCluster], list[int | None]]:
    """The clusters of the steps' answers (in the steps' order) and each step's cluster index."""
    groups = cluster([step.answer for step in steps])
    of_step: list[int | None] = [None] * len(steps)
    clusters = []
    for index, (label, members) in enumerate(groups):
        spellings: dict[str, None] = {}
        for member in members:
            of_step[member] = index
            spellings[steps[member].answer or ""] = None
        clusters.append(AnswerCluster(id=index, label=label, answers=list(spellings), count=len(members)))
    return clusters, of_step


def graph_nodes(steps: Sequence[StepResult], of_step: Sequence[int | None]) -> list[GraphNode]:
    return [
        GraphNode(
            round=step.round,
            slot=step.slot,
            position=step.key,
            status=step.status,
            candidates=step.candidates,
            answer=step.answer,
            cluster=group,
            finish_reason=step.finish_reason,
            completion_tokens=step.usage.completion_tokens,
            tail_tokens=step.tail_tokens,
        )
        for step, group in zip(steps, of_step, strict=True)
    ]


@router.get(
    "/{job_id}/graph",
    response_model=JobGraph,
    responses=problem_responses(401, 404, 422, 503),
    summary="The lineage graph so far: every committed step's position, candidates, answer and answer cluster",
)
async def graph(job_id: str, owner: Tenant, store: Store) -> JobGraph:
    record = await owned_record(store, job_id, owner)
    latest = await store.redis.xrevrange(store.keys.job(job_id).events, count=1)  # before the steps: none missed
    ordered = sorted((await store.steps(job_id)).values(), key=lambda s: (s.round, s.slot))
    clusters, of_step = await asyncio.to_thread(answer_clusters, ordered)  # math-verify is CPU work
    return JobGraph(
        job_id=job_id,
        problem=record.spec.problem,
        last_event_id=latest[0][0] if latest else None,
        nodes=graph_nodes(ordered, of_step),
        clusters=clusters,
    )


@router.get(
    "/{job_id}/steps/{position}",
    response_model=StepRecord,
    responses=problem_responses(401, 404, 422, 503),
    summary="One committed step (`r{round}:s{slot}` or `final`) with its prompt and where its tail begins",
)
async def step(job_id: str, position: str, owner: Tenant, store: Store) -> StepRecord:
    record = await owned_record(store, job_id, owner)
    steps = await store.steps(job_id)
    found = steps.get(position)
    if found is None:
        raise ApiError(404, f"job {job_id} has no committed step {position!r}", kind="not-found")
    return step_record(record.spec, steps, found)
