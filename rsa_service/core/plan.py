"""Every random choice of a run, derived only from (seed, round, slot).

A resumed job must rebuild byte-identical prompts, on any machine and any Python version. So nothing here uses
`random`: each draw is a BLAKE2b hash of the job seed and the position, and a K-subset is the K candidates with
the smallest hash keys (a uniform random subset, without replacement, independent across slots).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def _draw(*parts: object) -> int:
    digest = hashlib.blake2b(":".join(str(p) for p in ("rsa", *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def generation_seed(seed: int, round_index: int, slot: int, attempt: int = 0) -> int:
    """The sampling seed sent with one generation; a retry after an empty output gets a fresh one."""
    return _draw("gen", seed, round_index, slot, attempt) % 2**31


def choose_subset(seed: int, round_index: int, slot: int, survivors: Sequence[int], k: int) -> list[int]:
    """K of the previous round's surviving slots for the prompt of (round, slot), listed in ascending order.

    Ascending order keeps prompts that share their first candidate sharing a prefix, which prefix caches reuse.
    With fewer survivors than K every survivor is shown.
    """
    keyed = sorted(survivors, key=lambda candidate: _draw("subset", seed, round_index, slot, candidate))
    return sorted(keyed[:k])


def choose_candidates(seed: int, round_index: int, slot: int, survivors: Sequence[int], k: int) -> list[int]:
    """The previous-round slots that the prompt of (round, slot) shows.

    K=1 is bounded continuation: each slot refines its own lineage, the tail of the same slot one round earlier,
    and draws a survivor from (seed, round, slot) only when that trace was lost. K>1 is a random K-subset.
    """
    if k == 1 and slot in survivors:
        return [slot]
    return choose_subset(seed, round_index, slot, survivors, k)


def choose_member(seed: int, survivors: Sequence[int]) -> int:
    """One member of the final population, uniformly (the `sample` selection mode)."""
    if not survivors:
        raise ValueError("no surviving member to sample from")
    return min(survivors, key=lambda candidate: _draw("member", seed, candidate))


def choose_carried(seed: int, round_index: int, slot: int, candidates: Sequence[int]) -> int:
    """The candidate a consensus short-cut of (round, slot) carries forward, uniformly among `candidates`."""
    if not candidates:
        raise ValueError("no candidate to carry forward")
    return min(candidates, key=lambda candidate: _draw("carry", seed, round_index, slot, candidate))
