"""torch.compile of the decode step, with a switch and an automatic fallback to eager.

Inductor turns the step's weight reads into fused multiply-reduce loops and its small ops (norms, convs, RoPE,
attention at one query, residual merges, the router MLP) into a few generated kernels: C++/OpenMP on a CPU, Triton
on a GPU. On CUDA it is compiled with inductor's CUDA graphs (the "reduce-overhead" mode's option), which replay it.

By default the service compiles where it pays: on a GPU, or for models of hidden size 1024 and up. For a tiny model
on a CPU the generated kernels save little against a first compile that delays start-up, so it runs eagerly.
An explicit option (`BackendOptions.compile`, `rsa engine ... --compile`) or RSA_ENGINE_COMPILE=1 or 0 decides
instead; `rsa engine bench` compiles unless told not to, since it measures speed. If compiling a function fails, a
warning is logged and that function runs eagerly from then on; warm-up calls every compiled function before the
engine reports ready, so a failure shows at start-up, not mid-request.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch

from rsa_service.backends.engine import accel
from rsa_service.backends.engine.accel import inductor

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


MAX_PLANS = 256  # `replay` keys are few (batch buckets × attention widths); never unbounded


class Compiled:
    """`fn`, compiled on first call; falls back to `fn` itself (with a warning) if compilation fails.

    Each instance keeps its own compiled entries (`isolate_recompiles`), so `guard_filter` may drop guards that only
    tell this instance's arguments apart from another's.

    `replay(key, *args)` skips dynamo on repeated calls: the first call with a new `key` runs through dynamo (its
    guards pick or compile a graph) and records how that graph's flat arguments come from `args`; later calls with
    the same key call the graph directly. For a function whose only side effects are on tensors it is handed (the
    graph does those) and a key that fixes everything the guards check (every argument's shape, dtype and layout,
    the model). Tensors the call hands over must sit in `args` or in tuples and lists there; any other tensor the
    graph reads (the model's weights) is taken as fixed. At one row a decode step's guards, the prologue fetching
    its weights and dynamo's wrappers cost a sizeable share of the step. Replays, the guard filter and the
    stored-copy lowerings are `accel.inductor`'s hooks, used on a CPU where `accel.supported()`; elsewhere `fn` is
    compiled by plain inductor and `replay` is an ordinary call.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        enabled: bool,
        device: torch.device,
        dynamic: bool | None,
        guard_filter: inductor.GuardFilter | None = None,
    ) -> None:
        self._eager = fn
        self._name = getattr(fn, "__qualname__", repr(fn))
        # A GPU replays the step with inductor's CUDA graphs (the "reduce-overhead" mode's option) instead.
        self._hooks = enabled and device.type == "cpu" and accel.supported()
        options: dict[str, Any] = {"triton.cudagraphs": True} if device.type == "cuda" else {}
        if guard_filter is not None and self._hooks:
            # The generated wrapper's per-call asserts on input sizes and strides go too: the kept guards check the
            # inputs that can change, and the model's weights never do.
            options |= {"guard_filter_fn": guard_filter, "size_asserts": False}
        backend = self._backend if self._hooks else "inductor"
        self._fn = (
            torch.compile(fn, dynamic=dynamic, options=options, backend=backend, isolate_recompiles=True)
            if enabled
            else fn
        )
        self.compiled = enabled
        self._ran: list[tuple[inductor.Entry, Sequence[Any], Any]] | None = None  # the graphs a `replay` call ran
        self._plans: dict[Hashable, inductor.Plan | None] = {}

    def _backend(self, graph: torch.fx.GraphModule, examples: list[Any], **kwargs: Any) -> inductor.Entry:
        return inductor.compile_graph(graph, examples, kwargs.get("options") or {}, self._record)

    def _record(self, entry: inductor.Entry, flat: Sequence[Any], out: Any) -> None:
        if self._ran is not None:  # a `replay` is watching this call
            self._ran.append((entry, flat, out))

    def __call__(self, *args: Any) -> Any:
        if not self.compiled:
            return self._eager(*args)
        try:
            return self._fn(*args)
        except Exception as exc:  # torch raises many types here (BackendCompilerFailed, InductorError, C++ errors)
            logger.warning("engine: compiling %s failed; running it eagerly instead: %s", self._name, exc)
            self._fn, self.compiled = self._eager, False
            return self._eager(*args)

    def planned(self, key: Hashable) -> bool:
        """Whether `replay(key, ...)` will skip dynamo, so what only dynamo reads (dynamic-dimension marks, each a
        call through torch's dispatcher) need not be set."""
        return self._plans.get(key) is not None

    def replay(self, key: Hashable, *args: Any) -> Any:
        if not self._hooks:
            return self(*args)
        if key in self._plans:
            plan = self._plans[key]
            return tuple(plan(args)) if plan is not None else self(*args)
        self._ran = []
        try:
            with inductor.inductor_calls() as inner:
                result = self(*args)
            if len(self._plans) >= MAX_PLANS:
                self._plans.clear()
            self._plans[key] = inductor.plan(args, result, self._ran, inner)
        finally:
            self._ran = None  # holds the call's tensors: never beyond it
        return result
