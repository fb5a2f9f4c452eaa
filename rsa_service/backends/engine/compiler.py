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

import contextlib
import functools
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

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


_STORED_COPIES: set[torch._ops.OpOverload] = set()  # see `lower_as_stored_copy`
_lowered_copies: set[torch._ops.OpOverload] = set()


def lower_as_stored_copy(op: torch._ops.OpOverload) -> None:
    """Have inductor lower `op`, a copy of its one tensor argument, to a buffer stored inside its own generated
    kernels, for graphs compiled from now on.

    Left to itself inductor inlines the computation of a vector into every loop that reads it, so each row of a
    multiply-reduce recomputes a norm. An op inductor calls as an opaque extern kernel stops that, at the price of a
    Python dispatcher call and an alignment check per use and a kernel boundary on either side (50 a decode step for
    the mid-size model); a stored buffer stops it as well and lets the kernels around it fuse (bf16 batch-1 step:
    34 generated kernels → 9, 1.90 → 1.77 ms).
    """
    _STORED_COPIES.add(op)


@functools.cache
def _source_digest() -> str:
    """This file's hash (it holds the lowering), read once: the code a process runs does not change under it."""
    with open(__file__, "rb") as source:
        return hashlib.sha256(source.read()).hexdigest()


def _stored_copies_patch() -> dict[str, Any]:
    """Register `lower_as_stored_copy`'s lowerings (here, not at import: inductor's lowering module takes ~2 s), and
    the config patch that puts them in inductor's cache keys, which hash the graph and config but not lowerings: a
    graph compiled before an op was lowered this way (or before this file changed) is never reused after."""
    if not _STORED_COPIES:
        return {}
    from torch._inductor import lowering
    from torch._inductor.custom_graph_pass import CustomGraphPass

    def stored_copy(x: Any) -> Any:
        copy = lowering.clone(x)
        copy.realize()
        return copy

    for op in _STORED_COPIES - _lowered_copies:
        # By overload: a packet would leave alone an overload that already fell back to an extern call.
        lowering.register_lowering(op, type_promotion_kind=None)(stored_copy)
        _lowered_copies.add(op)

    class StoredCopies(CustomGraphPass):
        """Leaves the graph as it is; its uuid names the lowerings."""

        def __call__(self, graph: torch.fx.Graph) -> None:
            return None

        def uuid(self) -> str:
            return f"{_source_digest()}:{','.join(sorted(op.name() for op in _lowered_copies))}"

    return {"post_grad_custom_pre_pass": StoredCopies()}


MAX_PLANS = 256
Path = tuple[int, ...]  # indices from a call's arguments down through nested tuples and lists to a tensor


def _tensor_paths(value: Any, path: Path = ()) -> Iterator[tuple[Path, Tensor]]:
    if isinstance(value, Tensor):
        yield path, value
    elif isinstance(value, tuple | list):
        for i, item in enumerate(value):
            yield from _tensor_paths(item, (*path, i))


def _follow(args: Sequence[Any], path: Path) -> Any:
    for i in path:
        args = args[i]
    return args


class _Entry:
    """One graph inductor compiled, as dynamo calls it, noting each call's flat arguments and outputs for `_Plan`."""

    def __init__(self, compiled: Callable[..., Any], graph: torch.fx.GraphModule, owner: Compiled) -> None:
        self.compiled, self._owner = compiled, owner
        # Which tensor argument's dimension each symbolic size argument is (dynamo passes them separately).
        examples = [node.meta.get("example_value") for node in graph.graph.find_nodes(op="placeholder")]
        self.sizes: dict[int, tuple[int, int]] = {}
        for i, value in enumerate(examples):
            if isinstance(value, torch.SymInt):
                self.sizes[i] = next(
                    ((j, d) for j, t in enumerate(examples) if isinstance(t, Tensor)
                     for d, n in enumerate(t.shape) if isinstance(n, torch.SymInt) and n.node.expr == value.node.expr),
                    (-1, -1),
                )  # fmt: skip

    def __call__(self, *flat: Any) -> Any:
        out = self.compiled(*flat)
        if self._owner._ran is not None:  # a `replay` is watching this call
            self._owner._ran.append((self, flat, out))
        return out


class _Plan:
    """How to call one `_Entry` straight from a call's arguments: the flat list dynamo would build, with the
    model's own tensors fixed and the arguments' tensors and sizes looked up by position."""

    def __init__(self, entry: _Entry, args: Sequence[Any], flat: Sequence[Any], graph: Any = None) -> None:
        self.entry = entry
        self.graph = graph  # inductor's compiled graph, called without AOT autograd's wrappers (see `_planned`)
        paths = {id(t): path for path, t in _tensor_paths(args)}
        self.template = list(flat)
        self.inputs: list[tuple[int, Path]] = []
        self.sizes: list[tuple[int, Path, int]] = []
        for i, value in enumerate(flat):
            if isinstance(value, Tensor) and id(value) in paths:
                self.inputs.append((i, paths[id(value)]))
                self.template[i] = None  # never keep a call's tensors alive
            elif i in entry.sizes:
                j, dim = entry.sizes[i]
                if j < 0 or id(flat[j]) not in paths:
                    raise ValueError(f"no argument holds symbolic size {i}")
                self.sizes.append((i, paths[id(flat[j])], dim))

    def __call__(self, args: Sequence[Any]) -> Any:
        flat = self.template.copy()
        for i, path in self.inputs:
            flat[i] = _follow(args, path)
        for i, path, dim in self.sizes:
            flat[i] = _follow(args, path).shape[dim]
        if self.graph is not None:
            return self.graph.current_callable(flat)
        return self.entry.compiled(*flat)


class Compiled:
    """`fn`, compiled on first call; falls back to `fn` itself (with a warning) if compilation fails.

    Each instance keeps its own compiled entries (`isolate_recompiles`), so `guard_filter` may drop guards that only
    tell this instance's arguments apart from another's.

    `replay(key, *args)` skips dynamo on repeated calls: the first call with a new `key` runs through dynamo (its
    guards pick or compile a graph) and records how that graph's flat arguments come from `args`; later calls with
    the same key call the graph directly. For a function whose only side effects are on tensors it is handed (the
    graph does those) and a key that fixes everything the guards check (every argument's shape, dtype and layout,
    the model). Tensors the call hands over must sit in `args` or in tuples and lists there; any other tensor the
    graph reads (the model's weights) is taken as fixed. The decode step's guards, the prologue fetching ~280
    weights and dynamo's wrappers took ~0.5 ms of its ~2.2 ms at one row (bf16, hidden 512, 8 layers).
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
        self._fn = (
            torch.compile(fn, dynamic=dynamic, options=options, backend=self._backend, isolate_recompiles=True)
            if enabled
            else fn
        )
        self.compiled = enabled
        self._ran: list[tuple[_Entry, Sequence[Any], Any]] | None = None  # the graphs a `replay` call ran
        self._plans: dict[Hashable, _Plan | None] = {}

    def _backend(self, graph: torch.fx.GraphModule, examples: list[Any], **kwargs: Any) -> _Entry:
        from torch._inductor.compile_fx import compile_fx

        patches = (kwargs.get("options") or {}) | _stored_copies_patch()
        return _Entry(compile_fx(graph, examples, config_patches=patches), graph, self)

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
        """Whether `replay(key, ...)` will skip dynamo, so what only dynamo reads (dynamic-dimension marks, ~30 µs
        each) need not be set."""
        return self._plans.get(key) is not None

    def replay(self, key: Hashable, *args: Any) -> Any:
        if key in self._plans:
            plan = self._plans[key]
            return tuple(plan(args)) if plan is not None else self(*args)
        self._ran = []
        try:
            with _inductor_calls() as inner:
                result = self(*args)
            if len(self._plans) >= MAX_PLANS:  # keys are few (batch buckets × attention widths); never unbounded
                self._plans.clear()
            self._plans[key] = self._planned(args, result, self._ran, inner)
        finally:
            self._ran = None  # holds the call's tensors: never beyond it
        return result

    @staticmethod
    def _planned(
        args: Sequence[Any], result: Any, ran: list[tuple[_Entry, Sequence[Any], Any]], inner: list[_Call]
    ) -> _Plan | None:
        """A plan when one graph did the whole call (no graph break) and returned exactly `fn`'s result tuple.

        When inductor's graph inside it took exactly dynamo's flat arguments and returned exactly its outputs, AOT
        autograd's wrappers around it had nothing to do but bookkeeping (no input copied back, no output rebuilt
        as a view), so the plan calls the graph itself: ~0.1 ms of a ~1.5 ms bf16 batch-1 step.
        """
        if len(ran) != 1 or not isinstance(result, tuple):
            return None
        entry, flat, out = ran[0]
        if not _same(out, result):
            return None
        direct = len(inner) == 1 and _same(inner[0].inputs, flat) and _same(inner[0].outputs, out)
        try:
            return _Plan(entry, args, flat, inner[0].graph if direct else None)
        except ValueError:
            return None


class _Call(NamedTuple):
    graph: Any  # torch._inductor.output_code.CompiledFxGraph
    inputs: list[Any]
    outputs: Any


_RECORDING = threading.RLock()  # recordings nest, never interleave: each swaps CompiledFxGraph.__call__ and restores it


@contextlib.contextmanager
def _inductor_calls() -> Iterator[list[_Call]]:
    """Record every inductor graph called within, with its inputs and outputs. (A call on another thread meanwhile
    is recorded too, and only costs the plan its direct call.)"""
    from torch._inductor.output_code import CompiledFxGraph

    calls: list[_Call] = []
    with _RECORDING:
        original = vars(CompiledFxGraph).get("__call__")
        if original is None:  # not where this torch keeps it: record nothing, plans call through AOT autograd
            yield calls
            return

        def recorded(graph: CompiledFxGraph, inputs: Sequence[Any]) -> Any:
            listed = list(inputs)  # the graph empties its argument list
            outputs = original(graph, inputs)
            calls.append(_Call(graph, listed, outputs))
            return outputs

        CompiledFxGraph.__call__ = recorded
        try:
            yield calls
        finally:
            CompiledFxGraph.__call__ = original


def _same(a: Any, b: Sequence[Any]) -> bool:
    """Whether `a` is a sequence of exactly `b`'s objects."""
    return isinstance(a, list | tuple) and len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))
