"""Continuous batching of many sequences through one model, synchronously.

Each `step` drops cancelled sequences, decodes one token for every running sequence, admits waiting ones into free
cache rows, and spends what is left of the step's token budget on prompt chunks (a long prompt is prefilled over
several steps, so it never stalls the decoding sequences for more than one budget). A sequence whose prompt has
been fully prefilled samples its first token and joins the decoding batch; sequences leave it on EOS, a stop
string or their token budget, freeing their rows. Sequences admitted together whose prompts share a prefix of at
least `min_shared_prefix` tokens have that prefix prefilled once, in the group leader's row, and the whole state
(KV, conv, delayed value) forked into the others' rows: the N round-0 traces of a job prefill their prompt once.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from rsa_service.backends.base import FinishReason
from rsa_service.backends.engine.runner import ModelRunner
from rsa_service.backends.engine.sampling import SamplingParams, sample
from rsa_service.backends.engine.tokenizer import TextStream

logger = logging.getLogger(__name__)
_ids = itertools.count()


@dataclass(eq=False)
class GenSequence:
    """One generation in flight. `stream` (optional) turns tokens into text and watches stop strings."""

    prompt_ids: list[int]
    params: SamplingParams
    stream: TextStream | None = None
    id: int = field(default_factory=lambda: next(_ids))
    output_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    slot: int | None = None
    prefilled: int = 0  # prompt tokens already in the cache
    fork_source: GenSequence | None = None  # the leader whose prefix state this sequence will copy
    fork_len: int = 0  # tokens of that prefix (for a leader: where its prefill pauses until the fork)
    followers: list[GenSequence] = field(default_factory=list)
    generator: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ValueError("prompt_ids must not be empty")
        self.generator = self.params.generator()

    @property
    def text(self) -> str:
        return self.stream.text if self.stream is not None else ""

    @property
    def total_len(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)


DEFAULT_STEP_TOKENS = 512
DEFAULT_MIN_SHARED_PREFIX = 16


class Batcher:
    """Admits, prefills, decodes, samples and retires sequences; at most `max_batch` hold cache rows at once.

    `step_tokens` bounds the tokens one step feeds the model (decode tokens first, prompt chunks with the rest).
    """

    def __init__(
        self,
        runner: ModelRunner,
        *,
        eos_token_ids: Sequence[int],
        max_batch: int,
        step_tokens: int = DEFAULT_STEP_TOKENS,
        min_shared_prefix: int = DEFAULT_MIN_SHARED_PREFIX,
    ) -> None:
        self.runner = runner
        self.eos_token_ids = tuple(eos_token_ids)
        self.max_batch = max_batch
        self.step_tokens = step_tokens
        self.min_shared_prefix = min_shared_prefix
        self.waiting: list[GenSequence] = []
        self.prefilling: list[GenSequence] = []
        self.running: list[GenSequence] = []
        self._free_rows: list[int] = []  # a heap: the lowest free row first keeps the decode batch small
        self._rows_made = 0

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.prefilling and not self.running

    def step(self, admit: Iterable[GenSequence] = (), cancel: Iterable[GenSequence] = ()) -> list[GenSequence]:
        """One scheduling step; returns the sequences that finished in it (cancelled ones included)."""
        self.waiting.extend(admit)
        for seq in cancel:
            if seq.finish_reason is None:
                seq.finish_reason = "cancelled"
        done = self._retire()
        if self.running:
            positions = [s.total_len - 1 for s in self.running]
            last_tokens = [s.output_ids[-1] for s in self.running]
            self._advance(self.running, self.runner.decode(_rows(self.running), last_tokens, positions))
        self._admit()
        # Prefill always gets some of the step, however many sequences decode.
        self._prefill(max(self.step_tokens - len(self.running), self.step_tokens // 8, 1))
        return done + self._retire()

    def abort(self) -> None:
        """Drop every sequence and free every row (after a failed step); cache buffers are kept for reuse."""
        self.waiting.clear()
        self.prefilling.clear()
        self.running.clear()
        self._free_rows = list(range(self._rows_made))

    def generate(self, sequences: Sequence[GenSequence]) -> list[GenSequence]:
        """Run `sequences` to completion (no other callers): the synchronous path for the CLI and tests."""
        self.step(admit=sequences)
        while not all(s.finish_reason for s in sequences):
            self.step()
        return list(sequences)

    def _admit(self) -> None:
        room = self.max_batch - len(self.running) - len(self.prefilling)
        new, self.waiting = self.waiting[:room], self.waiting[room:]
        if not new:
            return
        for seq in new:
            if not self._free_rows:
                heapq.heappush(self._free_rows, self._rows_made)
                self._rows_made += 1
            seq.slot = heapq.heappop(self._free_rows)
        self.runner.reserve(self._rows_made, max(len(s.prompt_ids) + s.params.max_tokens for s in new))
        self._group_shared_prefixes(new)
        self.prefilling.extend(new)

    def _group_shared_prefixes(self, new: list[GenSequence]) -> None:
        """Make each run of new prompts sharing ≥ min_shared_prefix tokens follow one leader (prompts sorted)."""
        ordered = sorted(new, key=lambda s: s.prompt_ids)
        i = 0
        while i < len(ordered):
            leader, shared, j = ordered[i], len(ordered[i].prompt_ids) - 1, i + 1
            while j < len(ordered):
                common = min(_common_prefix(leader.prompt_ids, ordered[j].prompt_ids), len(ordered[j].prompt_ids) - 1)
                if common < max(self.min_shared_prefix, 1):
                    break
                shared, j = min(shared, common), j + 1
            if j > i + 1:  # every member keeps ≥ 1 token of its own, so each gets its own next-token logits
                leader.fork_len, leader.followers = shared, ordered[i + 1 : j]
                for follower in leader.followers:
                    follower.fork_source, follower.fork_len = leader, shared
            i = j

    def _prefill(self, budget: int) -> None:
        """Feed prompt chunks up to `budget` tokens; fork shared prefixes as soon as their leader has them."""
        while budget > 0:
            self._fork_ready()
            chunks: list[tuple[GenSequence, int]] = []
            for seq in self.prefilling:
                if seq.fork_source is not None or budget == 0:
                    continue
                stop = seq.fork_len if seq.followers else len(seq.prompt_ids)
                take = min(stop - seq.prefilled, budget)
                chunks.append((seq, take))
                budget -= take
            if not chunks:
                return
            hidden = self.runner.prefill(
                _rows([s for s, _ in chunks]),
                [s.prompt_ids[s.prefilled : s.prefilled + n] for s, n in chunks],
                [s.prefilled for s, _ in chunks],
            )
            for seq, take in chunks:
                seq.prefilled += take
            ended = [i for i, (s, _) in enumerate(chunks) if s.prefilled == len(s.prompt_ids)]
            if ended:
                seqs = [chunks[i][0] for i in ended]
                self._advance(seqs, self.runner.logits(hidden[ended]))
                self.prefilling = [s for s in self.prefilling if s not in seqs]
                self.running.extend(seqs)

    def _fork_ready(self) -> None:
        """Copy each leader's prefix state to its followers once the leader has prefilled exactly that prefix."""
        for leader in self.prefilling:
            if leader.followers and leader.prefilled == leader.fork_len:
                self.runner.cache.fork(_rows([leader])[0], _rows(leader.followers), leader.fork_len)
                for follower in leader.followers:
                    follower.prefilled, follower.fork_source = leader.fork_len, None
                leader.followers = []

    def _advance(self, seqs: list[GenSequence], logits: Tensor) -> None:
        tokens = sample(logits, [s.params for s in seqs], [s.generator for s in seqs]).tolist()  # the one sync
        for seq, token in zip(seqs, tokens, strict=True):
            seq.output_ids.append(token)
            stop_ids = self.eos_token_ids if seq.params.stop_token_ids is None else seq.params.stop_token_ids
            # EOS ends the sequence without reaching the text; a stop string is cut from it.
            if token in stop_ids or (seq.stream is not None and seq.stream.push(token)):
                seq.finish_reason = "stop"
            elif len(seq.output_ids) >= seq.params.max_tokens:
                seq.finish_reason = "length"

    def _retire(self) -> list[GenSequence]:
        """Remove finished (or cancelled) sequences from every queue and free their rows."""
        done = [s for s in (*self.running, *self.prefilling, *self.waiting) if s.finish_reason is not None]
        self.running = [s for s in self.running if s.finish_reason is None]
        self.prefilling = [s for s in self.prefilling if s.finish_reason is None]
        self.waiting = [s for s in self.waiting if s.finish_reason is None]
        for seq in done:
            for follower in seq.followers:  # a leader cancelled before the fork: its followers prefill alone
                follower.fork_source = None
            seq.followers = []
            if seq.stream is not None:
                seq.stream.flush()
            if seq.slot is not None:
                heapq.heappush(self._free_rows, seq.slot)
                seq.slot = None
        return done


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _rows(seqs: Sequence[GenSequence]) -> list[int]:
    rows = [s.slot for s in seqs]
    if None in rows:
        raise RuntimeError("a sequence in the batch has no cache row")
    return [row for row in rows if row is not None]
