"""torch.compile of the decode step, with a switch and an automatic fallback to eager.

Inductor turns the step's weight reads into fused multiply-reduce loops and its small ops (norms, convs, RoPE,
attention at one query, residual merges, the router MLP) into a few generated kernels: C++/OpenMP on a CPU, Triton
on a GPU. On CUDA it is compiled with inductor's CUDA graphs (the "reduce-overhead" mode's option), which replay it
(written for CUDA machines, untested here: this machine has no GPU).

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


GuardFilter = Callable[[list[Any]], list[bool]]


def input_guards_only(entries: list[Any]) -> list[bool]:
    """A dynamo guard filter for a function of a fixed model: keep the guards on the call's own inputs (tensor
    shapes, dtypes and strides, list lengths, global state), drop those on the model's parameters and module
    attributes.

    Checking the ~1,500 guards of a whole decode step walks every module's `__dict__` and costs ~0.3 ms per step
    once the step's weight reads have evicted those objects from the cache; the model never changes after loading,
    so those guards can never fail. Use it only with `isolate_recompiles`, so no other model reuses the entries.
    """
    return [
        not isinstance(entry.value, torch.nn.Parameter) and not entry.orig_guard.source.is_unspecialized_nn_module()
        for entry in entries
    ]


class Compiled:
    """`fn`, compiled on first call; falls back to `fn` itself (with a warning) if compilation fails.

    Each instance keeps its own compiled entries (`isolate_recompiles`), so `guard_filter` may drop guards that only
    tell this instance's arguments apart from another's.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        enabled: bool,
        device: torch.device,
        dynamic: bool | None,
        guard_filter: GuardFilter | None = None,
    ) -> None:
        self._eager = fn
        self._name = getattr(fn, "__qualname__", repr(fn))
        options: dict[str, Any] = {"triton.cudagraphs": True} if device.type == "cuda" else {}  # untested here
        if guard_filter is not None:
            # The generated wrapper's per-call asserts on input sizes and strides (~300 for the whole decode step,
            # ~0.2 ms) go too: the kept guards check the inputs that can change, and the model's weights never do.
            options |= {"guard_filter_fn": guard_filter, "size_asserts": False}
        self._fn = torch.compile(fn, dynamic=dynamic, options=options, isolate_recompiles=True) if enabled else fn
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
