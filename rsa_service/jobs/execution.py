"""Runs one claimed job: the Markovian RSA rounds, each step committed to Redis the moment it finishes.

Load → execute → record. Loading reads the committed steps, so a resumed job skips them and, because every
random choice derives from (seed, round, slot), rebuilds exactly the prompts the first attempt built. The runner
never sees HTTP or torch (only the Backend protocol) and never touches Redis except through the store.
A slot starts as soon as the candidates its prompt shows are committed, not when their whole round has ended
(unless a round's end can stop the job early): one slow trace delays only the prompts that show it.
Rounds and generations carry their position in the log context and in tracing spans, and feed the metrics of
`rsa_service.metrics` from what they already measured.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping

from rsa_service.backends.base import Backend, BackendError, Generation, GenerationRequest, aborted_usage
from rsa_service.core.adaptive import may_stop_after, shortcut_step, stop_reason
from rsa_service.core.answers import extract_boxed
from rsa_service.core.plan import choose_candidates, generation_seed
from rsa_service.core.reasoning import tail_source_text
from rsa_service.core.steps import StepResult, Usage, round_stats, step_key
from rsa_service.core.summary import round_steps, summarise
from rsa_service.core.tails import Tail, estimate_part_tokens
from rsa_service.jobs.gate import Gate
from rsa_service.jobs.lease import Lease
from rsa_service.jobs.models import JobRecord
from rsa_service.jobs.outage import OutagePolicy, OutageWait, is_outage
from rsa_service.jobs.requests import generation_request
from rsa_service.jobs.store import JobStore
from rsa_service.metrics import (
    ESTIMATED_TOKENS,
    GENERATION_LATENCY,
    GENERATIONS,
    PROMPT_TOKENS,
    ROUND_DURATION,
    STRAGGLER_WAIT,
    STRAGGLERS,
    TAIL_TRIMMED_TOKENS,
    TOKENS,
)
from rsa_service.observability import log_context, span
from rsa_service.wire import JobResult, Problem

log = logging.getLogger(__name__)

EMPTY_OUTPUT_RETRIES = 2  # a generation that returns no text is sampled again with a fresh seed this many times


class JobFailed(Exception):
    """The job cannot produce an answer; carries the problem details recorded on the job."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.detail or problem.title)
        self.problem = problem


class _Stop(Exception):
    """A budget or stopping rule ended the run early; the job still completes with its best answer."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _usable(generation: Generation) -> bool:
    return bool(generation.text.strip() or generation.reasoning.strip())


def _stage(round_index: int, final_select: bool) -> str:
    """A prompt's kind, for the prompt-size metric: the bare problem, an aggregation, or the final selection."""
    if final_select:
        return "final"
    return "initial" if round_index == 0 else "aggregation"


class JobRunner:
    """One attempt at one job, under one lease. Create a fresh runner for every claim.

    `gate` admits each generation (a worker shares one across its jobs); without one, the job gets its own
    with `concurrency` (default: the population) slots. `routed` holds the open backends that the job's stage
    routing names (`initial_backend` and friends); unrouted stages run on `backend`.
    """

    def __init__(
        self,
        store: JobStore,
        backend: Backend,
        job: JobRecord,
        lease: Lease,
        *,
        gate: Gate | None = None,
        concurrency: int | None = None,
        routed: Mapping[str, Backend] | None = None,
        outage: OutagePolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.backend = backend
        self.routed = dict(routed or {})
        self.job = job
        self.spec = job.spec
        self.params = job.spec.params
        self.lease = lease
        self.fence = lease.fence
        self.clock = clock
        self.gate = gate or Gate(concurrency or self.params.population)
        self._outage = OutageWait(job.id, outage or OutagePolicy(), self._emit, clock)
        self._steps: dict[str, StepResult] = {}
        self._ran_before_s = 0.0  # wall time of earlier attempts (since the first claim)
        # Slots started before their round (see `_start_ready`), by (round, slot).
        self._early: dict[tuple[int, int], asyncio.Task[None]] = {}
        self._plans: dict[int, tuple[list[list[int]], list[list[int]]]] = {}  # see `_plan`
        # By step key: what a running step has spent so far, and the request the backend is working on (None
        # between requests), so a straggler cut mid-request still counts what it cost (see `_cut_usage`).
        self._spending: dict[str, tuple[Usage, GenerationRequest | None]] = {}

    # ---- load → execute → record ----------------------------------------------------------------------------

    async def run(self) -> JobResult:
        """Run the missing steps and finish the job. Raises LeaseLost if fenced off mid-way."""
        await self._load()
        started = self.clock()
        stopped_reason: str | None = None
        error: Problem | None = None
        try:
            await self._execute_within_wall_budget()
        except _Stop as stop:
            stopped_reason = stop.reason
        except JobFailed as failed:
            error = failed.problem
        wall_s = self._ran_before_s + self.clock() - started
        result = await asyncio.to_thread(self.result, stopped_reason=stopped_reason, wall_s=wall_s, error=error)
        self.lease.finishing = True
        await asyncio.shield(self.store.finish(self.job.id, self.fence, result=result, error=error))
        return result.model_copy(update={"status": "failed" if error else "completed"})

    async def _load(self) -> None:
        """The committed steps (never generated again) and the time spent since the job was first claimed."""
        self._steps = await self.store.steps(self.job.id)
        first_claim_ms = self.job.started_ms or self.job.created_ms
        self._ran_before_s = max(0.0, (await self.store.now_ms() - first_claim_ms) / 1000)

    @property
    def committed(self) -> int:
        return len(self._steps)

    def result(
        self, *, stopped_reason: str | None = None, wall_s: float | None = None, error: Problem | None = None
    ) -> JobResult:
        summary = summarise(self.params, self._steps, stopped_reason=stopped_reason, wall_s=wall_s)
        return JobResult(
            job_id=self.job.id,
            status="failed" if error else "completed",
            answer=summary.answer,
            select=summary.select,
            rounds=summary.rounds,
            usage=summary.usage,
            usage_by_backend=summary.usage_by_backend,
            stopped_reason=summary.stopped_reason,
            wall_s=summary.wall_s,
            error=error,
        )

    async def _execute_within_wall_budget(self) -> None:
        if self.params.max_wall_s is None:
            await self._execute()
            return
        remaining = self.params.max_wall_s - self._ran_before_s
        try:
            async with asyncio.timeout(max(remaining, 0.0)):
                await self._execute()
        except TimeoutError:
            raise _Stop(f"wall time budget of {self.params.max_wall_s:g}s reached") from None

    async def _execute(self) -> None:
        try:
            for round_index in range(self.params.stages):
                await self._run_round(round_index)
                await self._after_round(round_index)
        finally:
            early, self._early = self._early, {}
            for task in early.values():
                task.cancel()
            await asyncio.gather(*early.values(), return_exceptions=True)

    async def _emit(self, kind: str, data: dict[str, object]) -> None:
        await self.store.emit(self.job.id, self.fence, kind, data)

    async def _after_round(self, round_index: int) -> None:
        slots = self.params.population_of(round_index)
        members = round_steps(self._steps, round_index, slots)
        stats = await asyncio.to_thread(round_stats, round_index, members, slots)
        await self.store.emit(self.job.id, self.fence, "round", stats.model_dump(mode="json"))
        succeeded = sum(1 for step in members if step.status == "ok")
        if succeeded < self.params.required_survivors(round_index):
            first_error = next((step.error for step in members if step.error), "no usable output")
            raise JobFailed(
                Problem(
                    title="Generation failed",
                    status=502,
                    detail=f"round {round_index}: only {succeeded} of {slots} generations succeeded, "
                    f"{self.params.required_survivors(round_index)} needed; first error: {first_error}",
                    step=step_key(round_index, next((s.slot for s in members if s.status != "ok"), 0)),
                )
            )
        previous = round_steps(self._steps, round_index - 1, self.params.population) if round_index else []
        before = round_stats(round_index - 1, previous, self.params.population) if previous else None
        reason = stop_reason(self.params, stats, before)
        if reason is not None:
            raise _Stop(reason)

    # ---- one round ----------------------------------------------------------------------------------------

    def _survivors(self, round_index: int) -> list[int]:
        members = round_steps(self._steps, round_index, self.params.population_of(round_index))
        return [step.slot for step in members if step.status == "ok" and step.tail]

    def _pipelined(self, round_index: int) -> bool:
        """Whether `round_index`'s slots may start before the previous round ends: not when that round's end can
        stop the job early, since the next round's steps would then have been generated for nothing."""
        return 0 < round_index <= self.params.rounds and not may_stop_after(self.params, round_index - 1)

    def _start_ready(self, round_index: int, committed: int | None = None) -> None:
        """Start each slot of `round_index` whose candidates are already committed, before its round begins
        (only the slots that show `committed`, when one slot of the previous round was just committed).

        A slot's candidates are the K of the previous round with the smallest hash keys among its survivors
        (`core.plan`). When the K smallest among all N are committed with a usable tail, they are those among the
        survivors whatever the rest of the round does, so the slot's prompt is the one the round's end would
        build: the run's output is unchanged, and a round no longer waits on its slowest member for the slots that
        do not need it. A slot with a failed candidate waits for the round's end, as before.
        """
        if not self._pipelined(round_index):
            return
        choices, showing = self._plan(round_index)
        for slot in range(self.params.population_of(round_index)) if committed is None else showing[committed]:
            if (round_index, slot) in self._early or step_key(round_index, slot) in self._steps:
                continue
            parents = [self._steps.get(step_key(round_index - 1, candidate)) for candidate in choices[slot]]
            if all(parent is not None and parent.status == "ok" and parent.tail for parent in parents):
                with log_context(round=round_index):
                    self._early[round_index, slot] = asyncio.create_task(
                        self._generate_and_commit(round_index, slot, list(range(self.params.population))),
                        name=f"slot-{slot}",
                    )

    def _plan(self, round_index: int) -> tuple[list[list[int]], list[list[int]]]:
        """Each slot's candidates when the whole previous round survives, and for each member of the previous
        round the slots that show it; hashed once per round."""
        if round_index not in self._plans:
            population = range(self.params.population)  # every stage that feeds another has N slots
            choices = [
                choose_candidates(self.params.seed, round_index, slot, population, self.params.subset)
                for slot in range(self.params.population_of(round_index))
            ]
            showing: list[list[int]] = [[] for _ in population]
            for slot, chosen in enumerate(choices):
                for candidate in chosen:
                    showing[candidate].append(slot)
            self._plans[round_index] = (choices, showing)
        return self._plans[round_index]

    async def _run_round(self, round_index: int) -> None:
        self._check_token_budget()
        survivors = self._survivors(round_index - 1) if round_index else []
        started_early = {slot: self._early.pop((r, slot)) for r, slot in list(self._early) if r == round_index}
        missing = [
            slot
            for slot in range(self.params.population_of(round_index))
            if step_key(round_index, slot) not in self._steps and slot not in started_early
        ]
        if not missing and not started_early:
            return
        started = self.clock()
        finished_at: list[float] = []
        with log_context(round=round_index), span("round", round=round_index):  # the slot tasks inherit both
            tasks = started_early | {
                slot: asyncio.create_task(self._generate_and_commit(round_index, slot, survivors), name=f"slot-{slot}")
                for slot in missing
            }
            self._start_ready(round_index + 1)  # a resumed round's next slots may be ready already
            for task in tasks.values():
                task.add_done_callback(lambda _: finished_at.append(self.clock()))
            try:
                await self._await_round(round_index, tasks)
                self._observe_round(started, finished_at, len(tasks))
            finally:
                for task in tasks.values():
                    task.cancel()
                await asyncio.gather(*tasks.values(), return_exceptions=True)

    def _observe_round(self, started: float, finished_at: list[float], slots: int) -> None:
        """Round time, and how long the round waited on its slowest slots once a quorum of them had finished."""
        ended = self.clock()
        ROUND_DURATION.observe(ended - started)
        quorum = math.ceil(self.params.quorum * slots)
        if len(finished_at) >= quorum:
            STRAGGLER_WAIT.observe(ended - sorted(finished_at)[quorum - 1])

    async def _await_round(self, round_index: int, tasks: Mapping[int, asyncio.Task[None]]) -> None:
        """Wait for the round; with a deadline and the quorum policy, cut stragglers once a quorum is done."""
        deadline = self.params.round_deadline_s
        if deadline is None or self.params.straggler_policy == "wait":
            await asyncio.gather(*tasks.values())
            return
        needed = self.params.required_survivors(round_index)
        _, pending = await asyncio.wait(tasks.values(), timeout=deadline)
        while pending and self._done_in(round_index) < needed:
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks.values():
            if task.done() and not task.cancelled() and task.exception():
                raise task.exception()  # type: ignore[misc]
        for slot, task in tasks.items():
            if task in pending:
                task.cancel()
                straggler = StepResult(
                    round=round_index,
                    slot=slot,
                    status="straggler",
                    error=f"still running after the {deadline:g}s round deadline",
                    usage=await self._cut_usage(round_index, slot),
                )
                STRAGGLERS.inc()
                await self._commit(straggler)

    async def _cut_usage(self, round_index: int, slot: int) -> Usage:
        """What a cut step cost: its finished requests, and an upper bound for the one it was waiting on (the
        server aborts it and reports nothing)."""
        spent, request = self._spending.pop(step_key(round_index, slot), (Usage(), None))
        if request is None:
            return spent
        name, backend = self._backend_for(round_index)
        bound = await aborted_usage(backend, request)
        self._count_tokens(name, bound)
        return spent + bound

    def _done_in(self, round_index: int) -> int:
        members = round_steps(self._steps, round_index, self.params.population_of(round_index))
        return sum(1 for step in members if step.status == "ok")

    # ---- one step -----------------------------------------------------------------------------------------

    def _prompt(self, round_index: int, slot: int, survivors: list[int]) -> tuple[str, list[int]]:
        if round_index == 0:
            return self.spec.problem, []
        if len(survivors) == self.params.population:
            chosen = self._plan(round_index)[0][slot]  # the whole previous round survived: hashed already
        else:
            chosen = choose_candidates(self.params.seed, round_index, slot, survivors, self.params.subset)
        tails = [self._steps[step_key(round_index - 1, candidate)].tail for candidate in chosen]
        return self.spec.templates.render(self.spec.problem, tails), chosen

    async def _generate_and_commit(self, round_index: int, slot: int, survivors: list[int]) -> None:
        if round_index and not survivors:
            raise JobFailed(
                Problem(
                    title="Generation failed",
                    status=502,
                    detail=f"round {round_index - 1} left no usable trace to aggregate",
                )
            )
        content, chosen = self._prompt(round_index, slot, survivors)
        final_select = self.params.final_sampling(round_index)
        max_tokens = self.params.max_tokens_for(round_index)
        if self.params.consensus_shortcut and round_index:
            candidates = [self._steps[step_key(round_index - 1, candidate)] for candidate in chosen]
            carried = shortcut_step(self.params, round_index, slot, candidates)
            if carried is not None:
                await self._commit(carried)
                return
        with log_context(slot=slot), span("generation", round=round_index, slot=slot):
            async with self.gate.slot():
                self.lease.check()  # never start a generation under a lease that may have passed to another worker
                started = self.clock()
                try:
                    step = await self._generate_step(round_index, slot, content, chosen, max_tokens, final_select)
                    await self._commit(step.model_copy(update={"duration_s": self.clock() - started}))
                finally:
                    self._spending.pop(step_key(round_index, slot), None)

    async def _generate_step(
        self,
        round_index: int,
        slot: int,
        content: str,
        chosen: list[int],
        max_tokens: int,
        final_select: bool,
    ) -> StepResult:
        name, backend = self._backend_for(round_index)
        base = StepResult(round=round_index, slot=slot, candidates=chosen, backend=name)
        stage = _stage(round_index, final_select)
        spent = Usage()  # every attempt's tokens, empty outputs and failures included
        for attempt in range(EMPTY_OUTPUT_RETRIES + 1):
            seed = generation_seed(self.params.seed, round_index, slot, attempt)
            # A slot's prompts across rounds share the problem and template: one lineage, one replica's cache.
            request = generation_request(
                self.spec,
                content,
                max_tokens,
                seed,
                round_index=round_index,
                final_select=final_select,
                lineage=f"{self.job.id}/s{slot}",
            )
            tried = base.model_copy(update={"seed": seed, "attempts": attempt + 1})
            try:
                generation, spent = await self._generate_through_outages(name, backend, request, stage, spent, base)
            except BackendError as exc:
                log.warning("job %s %s: generation failed: %s", self.job.id, base.key, exc)
                return tried.model_copy(update={"status": "failed", "error": str(exc), "usage": spent + exc.usage})
            spent += generation.spent
            self._spending[base.key] = (spent, None)
            if _usable(generation):
                try:
                    return await self._record(tried, backend, generation, spent)
                except BackendError as exc:  # the tail could not be cut: the trace is lost, its tokens are not
                    log.warning("job %s %s: cutting the tail failed: %s", self.job.id, base.key, exc)
                    return tried.model_copy(update={"status": "failed", "error": str(exc), "usage": spent})
        return base.model_copy(
            update={
                "status": "failed",
                "error": "the model returned empty output",
                "attempts": EMPTY_OUTPUT_RETRIES + 1,
                "usage": spent,
            }
        )

    async def _generate_through_outages(
        self, name: str, backend: Backend, request: GenerationRequest, stage: str, spent: Usage, base: StepResult
    ) -> tuple[Generation, Usage]:
        """`backend.generate(request)`, waiting while the backend is down (see `jobs.outage`); with `spent` plus
        what the failed calls cost. A permanent error is raised; so is JobFailed once the outage budget is spent."""
        while True:
            self._spending[base.key] = (spent, request)
            started = self.clock()
            try:
                generation = await backend.generate(request)
            except BackendError as exc:
                self._observe_generation(name, None, exc.usage, stage, self.clock() - started)
                if not is_outage(exc):
                    raise
                spent += exc.usage
                if not await self._outage.wait(name, exc, self.lease.check):
                    raise JobFailed(self._outage.spent(name, exc)) from exc
                continue
            self._observe_generation(name, generation, generation.spent, stage, self.clock() - started)
            await self._outage.over(name)
            return generation, spent

    def _backend_for(self, round_index: int) -> tuple[str, Backend]:
        """The name and open backend of the stage `round_index` belongs to (see `RSAParams.stage_of`)."""
        name = self.params.stage_backend(round_index)
        if name is None or name == self.spec.backend:
            return self.spec.backend, self.backend
        return name, self.routed[name]

    def _observe_generation(
        self, backend: str, generation: Generation | None, spent: Usage, stage: str, seconds: float
    ) -> None:
        """One backend call that returned (`generation`) or failed (None), and what it `spent`; a cancelled one
        is counted when it is cut (`_cut_usage`)."""
        GENERATION_LATENCY.labels(backend).observe(seconds)
        self._count_tokens(backend, spent)
        if generation is None:
            GENERATIONS.labels(backend, "failed").inc()
            return
        GENERATIONS.labels(backend, "ok" if _usable(generation) else "empty").inc()
        PROMPT_TOKENS.labels(stage).observe(generation.usage.prompt_tokens)

    @staticmethod
    def _count_tokens(backend: str, spent: Usage) -> None:
        TOKENS.labels(backend, "prompt").inc(spent.prompt_tokens)
        TOKENS.labels(backend, "completion").inc(spent.completion_tokens)
        ESTIMATED_TOKENS.labels(backend).inc(spent.estimated_tokens)

    async def _record(self, attempt: StepResult, backend: Backend, generation: Generation, spent: Usage) -> StepResult:
        """The step `generation` makes of `attempt` (its seed and attempt count set); `spent` is its usage."""
        finished = generation.finish_reason == "stop"
        source = tail_source_text(generation.reasoning, generation.text, self.params.tail_source, finished=finished)
        tail = await self._tail(backend, source, generation) if attempt.round < self.params.rounds else None
        if tail is not None:
            trimmed = max(0, tail.source_tokens - tail.tokens)
            TAIL_TRIMMED_TOKENS.labels(attempt.backend or self.spec.backend).inc(trimmed)
        answer = extract_boxed(generation.text) or extract_boxed(generation.reasoning)
        return attempt.model_copy(
            update={
                "text": generation.text,
                "reasoning": generation.reasoning,
                "tail": tail.text if tail else "",
                "tail_tokens": tail.tokens if tail else 0,
                "source_tokens": tail.source_tokens if tail else 0,
                "answer": answer,
                "finish_reason": generation.finish_reason,
                "usage": spent,
            }
        )

    async def _tail(self, backend: Backend, source: str, generation: Generation) -> Tail:
        """A trace no longer than τ is kept whole (the spec's rule) without counting it again.

        The generation's own token count bounds every part of it, so when it is within τ no backend call is
        needed; the tail's `tokens` is then that bound. Against a remote server this saves a /tokenize round
        trip per generation whenever traces are shorter than τ.
        """
        produced = generation.usage.completion_tokens
        if produced <= self.params.tail_tokens:
            return Tail(text=source, tokens=produced, source_tokens=produced)
        if self.params.tail_source == "full":
            hint = produced  # the source is the whole completion
        else:
            rest = generation.text if source is generation.reasoning else generation.reasoning
            hint = estimate_part_tokens(source, rest, produced)
        return await backend.tail(source, self.params.tail_tokens, tokens_hint=hint)

    async def _commit(self, step: StepResult) -> None:
        event = {
            "round": step.round,
            "slot": step.slot,
            "status": step.status,
            "candidates": step.candidates,
            "answer": step.answer,
            "finish_reason": step.finish_reason,
            "completion_tokens": step.usage.completion_tokens,
            "tail_tokens": step.tail_tokens,
            "shortcut_from": step.shortcut_from,
        }
        if await self.store.commit(self.job.id, self.fence, step, event):
            self._steps[step.key] = step
        else:  # committed first by a task of this attempt (a straggler that finished as it was cut): keep that
            self._steps[step.key] = await self.store.step(self.job.id, step.key) or step
        self._check_token_budget()
        self._start_ready(step.round + 1, committed=step.slot)

    def _check_token_budget(self) -> None:
        budget = self.params.max_total_tokens
        if budget is not None:
            spent = sum(s.usage.total for s in self._steps.values())
            if spent >= budget:
                raise _Stop(f"token budget of {budget} reached ({spent} tokens spent)")
        output_budget = self.params.max_output_tokens
        if output_budget is not None:
            produced = sum(s.usage.completion_tokens for s in self._steps.values())
            if produced >= output_budget:
                raise _Stop(f"output token budget of {output_budget} reached ({produced} tokens generated)")
