"""Optional speed-ups below torch's public API: hand-written AVX-512 CPU kernels (`kernels`, built from
`kernels.cpp`) and hooks into dynamo's guards and inductor's lowering and compiled graphs (`inductor`).

Both lean on torch internals that change between releases, so they are used only on the torch releases they were
written and tested against (`supported`). Anywhere else the engine takes its generic path: the same results through
torch's public ops and a plain `torch.compile`, only slower. The model modules never import this package.
"""

from __future__ import annotations

import functools
import logging

import torch

logger = logging.getLogger(__name__)

# The oldest and newest (major, minor) torch release these hooks were checked against; widen after checking.
SUPPORTED_TORCH = ((2, 13), (2, 13))


@functools.cache
def supported() -> bool:
    """Whether the running torch is one the kernels and inductor hooks were written for (logged once if not)."""
    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    oldest, newest = SUPPORTED_TORCH
    if oldest <= (major, minor) <= newest:
        return True
    logger.warning(
        "engine: torch %s is outside the range the CPU kernels and inductor hooks support (%s.%s to %s.%s); "
        "using the generic path",
        torch.__version__, *oldest, *newest,
    )  # fmt: skip
    return False
