"""Hooks into dynamo's guards and inductor's lowering and compiled graphs, private APIs of the torch release this
package supports (`accel.supported`); `compiler.Compiled` uses them only there.

- `input_guards_only`: a guard filter keeping only the guards on a call's own inputs.
- `lower_as_stored_copy`: an op inductor lowers to a buffer stored inside its own kernels.
- `compile_graph` and `plan`: the graph inductor compiled, wrapped so that a call can be recorded and later replayed
  without dynamo (`Compiled.replay`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

GuardFilter = Callable[[list[Any]], list[bool]]


def input_guards_only(entries: list[Any]) -> list[bool]:
    """A dynamo guard filter for a function of a fixed model: keep the guards on the call's own inputs (tensor
    shapes, dtypes and strides, list lengths, global state), drop those on the model's parameters and module
    attributes.

    Checking every guard of a whole decode step walks every module's `__dict__` on each call, costly once the step's
    weight reads have evicted those objects from the cache; the model never changes after loading, so those guards
    can never fail. Use it only with `isolate_recompiles`, so no other model reuses the entries.
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
    Python dispatcher call per use and a kernel boundary on either side; a stored buffer stops it as well and lets
    the kernels around it fuse into far fewer.
    """
    _STORED_COPIES.add(op)


@functools.cache
def _source_digest() -> str:
    """This file's hash (it holds the lowering), read once: the code a process runs does not change under it."""
    with open(__file__, "rb") as source:
        return hashlib.sha256(source.read()).hexdigest()


def _stored_copies_patch() -> dict[str, Any]:
    """Register `lower_as_stored_copy`'s lowerings (here, not at import: inductor's lowering module is slow to
    import), and the config patch that puts them in inductor's cache keys, which hash the graph and config but not
    lowerings: a graph compiled before an op was lowered this way (or before this file changed) is never reused
    after."""
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


Ran = Callable[["Entry", Sequence[Any], Any], None]  # told each call's flat arguments and outputs


class Entry:
    """One graph inductor compiled, as dynamo calls it, telling `ran` each call's flat arguments and outputs."""

    def __init__(self, compiled: Callable[..., Any], graph: torch.fx.GraphModule, ran: Ran) -> None:
        self.compiled, self._ran = compiled, ran
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
        self._ran(self, flat, out)
        return out


def compile_graph(graph: torch.fx.GraphModule, examples: list[Any], options: dict[str, Any], ran: Ran) -> Entry:
    """Inductor's graph for `graph` with `options` and the stored-copy lowerings, as a dynamo backend returns it."""
    from torch._inductor.compile_fx import compile_fx

    return Entry(compile_fx(graph, examples, config_patches=options | _stored_copies_patch()), graph, ran)


class Plan:
    """How to call one `Entry` straight from a call's arguments: the flat list dynamo would build, with the
    model's own tensors fixed and the arguments' tensors and sizes looked up by position."""

    def __init__(self, entry: Entry, args: Sequence[Any], flat: Sequence[Any], graph: Any = None) -> None:
        self.entry = entry
        self.graph = graph  # inductor's compiled graph, called without AOT autograd's wrappers (see `plan`)
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


class Call(NamedTuple):
    graph: Any  # torch._inductor.output_code.CompiledFxGraph
    inputs: list[Any]
    outputs: Any


def plan(
    args: Sequence[Any], result: Any, ran: list[tuple[Entry, Sequence[Any], Any]], inner: list[Call]
) -> Plan | None:
    """A plan when one graph did the whole call (no graph break) and returned exactly the function's result tuple.

    When inductor's graph inside it took exactly dynamo's flat arguments and returned exactly its outputs, AOT
    autograd's wrappers around it had nothing to do but bookkeeping (no input copied back, no output rebuilt as a
    view), so the plan calls the graph itself and skips them.
    """
    if len(ran) != 1 or not isinstance(result, tuple):
        return None
    entry, flat, out = ran[0]
    if not _same(out, result):
        return None
    direct = len(inner) == 1 and _same(inner[0].inputs, flat) and _same(inner[0].outputs, out)
    try:
        return Plan(entry, args, flat, inner[0].graph if direct else None)
    except ValueError:
        return None


_RECORDING = threading.RLock()  # recordings nest, never interleave: each swaps CompiledFxGraph.__call__ and restores it


@contextlib.contextmanager
def inductor_calls() -> Iterator[list[Call]]:
    """Record every inductor graph called within, with its inputs and outputs. (A call on another thread meanwhile
    is recorded too, and only costs the plan its direct call.)"""
    from torch._inductor.output_code import CompiledFxGraph

    calls: list[Call] = []
    with _RECORDING:
        original = vars(CompiledFxGraph).get("__call__")
        if original is None:  # not where this torch keeps it: record nothing, plans call through AOT autograd
            yield calls
            return

        def recorded(graph: CompiledFxGraph, inputs: Sequence[Any]) -> Any:
            listed = list(inputs)  # the graph empties its argument list
            outputs = original(graph, inputs)
            calls.append(Call(graph, listed, outputs))
            return outputs

        setattr(CompiledFxGraph, "__call__", recorded)  # noqa: B010 (assigning a method: mypy refuses the plain form)
        try:
            yield calls
        finally:
            setattr(CompiledFxGraph, "__call__", original)  # noqa: B010


def _same(a: Any, b: Sequence[Any]) -> bool:
    """Whether `a` is a sequence of exactly `b`'s objects."""
    return isinstance(a, list | tuple) and len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))
