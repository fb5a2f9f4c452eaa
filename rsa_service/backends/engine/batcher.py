"""Continuous batching of many sequences through one model, synchronously.

Each `step` drops cancelled sequences, decodes one token for every running sequence, admits waiting ones (prefill
plus their first token), and retires those that hit EOS, a stop string or their token budget, freeing their cache
slots for the next admissions. Sequences of different lengths join and leave independently.
"""

from __future__ import annotations

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


class Batcher:
    """Admits, prefills, decodes, samples and retires sequences; at most `max_batch` hold cache slots at once."""

    def __init__(self, runner: ModelRunner, *, eos_token_ids: Sequence[int], max_batch: int) -> None:
        self.runner = runner
        self.eos_token_ids = tuple(eos_token_ids)
        self.max_batch = max_batch
        self.waiting: list[GenSequence] = []
        self.running: list[GenSequence] = []
        self._free_slots: list[int] = []
        self._slots_made = 0

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running

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
            self._advance(self.running, self.runner.decode(_slots(self.running), last_tokens, positions))
        new = self._admit()
        if new:
            self._advance(new, self.runner.prefill(_slots(new), [s.prompt_ids for s in new]))
            self.running.extend(new)
        return done + self._retire()

    def abort(self) -> None:
        """Drop every sequence and free every slot (after a failed step); cache buffers are kept for reuse."""
        self.waiting.clear()
        self.running.clear()
        self._free_slots = list(range(self._slots_made))

    def generate(self, sequences: Sequence[GenSequence]) -> list[GenSequence]:
        """Run `sequences` to completion (no other callers): the synchronous path for the CLI and tests."""
        self.step(admit=sequences)
        while not all(s.finish_reason for s in sequences):
            self.step()
        return list(sequences)

    def _admit(self) -> list[GenSequence]:
        room = self.max_batch - len(self.running)
        new, self.waiting = self.waiting[:room], self.waiting[room:]
        if not new:
            return []
        for seq in new:
            if not self._free_slots:
                self._free_slots.append(self._slots_made)
                self._slots_made += 1
            seq.slot = self._free_slots.pop()
        self.runner.cache.reserve(self._slots_made, max(len(s.prompt_ids) + s.params.max_tokens for s in new))
        return new

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
        """Remove finished (or cancelled) sequences from both queues and free their slots."""
        done = [s for s in (*self.running, *self.waiting) if s.finish_reason is not None]
        self.running = [s for s in self.running if s.finish_reason is None]
        self.waiting = [s for s in self.waiting if s.finish_reason is None]
        for seq in done:
            if seq.stream is not None:
                seq.stream.flush()
            if seq.slot is not None:
                self._free_slots.append(seq.slot)
                seq.slot = None
        return done


def _slots(seqs: Sequence[GenSequence]) -> list[int]:
    slots = [s.slot for s in seqs]
    if None in slots:
        raise RuntimeError("a running sequence has no cache slot")
    return [slot for slot in slots if slot is not None]
