"""torch.compile of the decode step, with a switch and an automatic fallback to eager.

Inductor turns the step's weight reads into fused multiply-reduce loops and its small ops (norms, convs, RoPE,
attention at one query, residual merges, the router MLP) into a few generated kernels: C++/OpenMP on a CPU, Triton
on a GPU. On CUDA it is compiled in "reduce-overhead" mode, which replays it as CUDA graphs (written for CUDA
machines, untested here: this machine has no GPU).

By default compilation is on where it pays: on a GPU, or for models of hidden size 1024 and up. For a tiny model
on a CPU the generated kernels save little and the first compile costs tens of seconds, so it runs eagerly.
RSA_ENGINE_COMPILE=1 or 0 (or `enabled=`) decides instead. If compiling a function fails, a warning is
logged and that function runs eagerly from then on; warm-up calls every compiled function before the engine
reports ready, so a failure shows at start-up, not mid-request.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import torch

logger = logging.getLogger(__name__)

COMPILE_ENV = "RSA_ENGINE_COMPILE"


COMPILE_MIN_HIDDEN = 1024


def compile_enabled(option: bool | None = None, *, worthwhile: bool = True) -> bool:
    """An explicit option wins; else RSA_ENGINE_COMPILE ("0"/"false"/"no"/"off" disable, anything else enables);
    else `worthwhile` (see the module docstring)."""
    if option is not None:
        return option
    setting = os.environ.get(COMPILE_ENV, "").strip().lower()
    if not setting:
        return worthwhile
    return setting not in {"0", "false", "no", "off"}


class Compiled:
    """`fn`, compiled on first call; falls back to `fn` itself (with a warning) if compilation fails."""

    def __init__(self, fn: Callable[..., Any], *, enabled: bool, device: torch.device, dynamic: bool | None) -> None:
        self._eager = fn
        self._name = getattr(fn, "__qualname__", repr(fn))
        mode = "reduce-overhead" if device.type == "cuda" else None  # CUDA graphs on a GPU (untested here)
        self._fn = torch.compile(fn, dynamic=dynamic, mode=mode) if enabled else fn
        self.compiled = enabled

    def __call__(self, *args: Any) -> Any:
        if not self.compiled:
            return self._eager(*args)
        try:
            return self._fn(*args)
        except Exception as exc:  # torch raises many types here (BackendCompilerFailed, InductorError, C++ errors)
            logger.warning("engine: compiling %s failed; running it eagerly instead: %s", self._name, exc)
            self._fn, self.compiled = self._eager, False
            return self._eager(*args)
