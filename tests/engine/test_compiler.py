"""`Compiled.replay`: repeated calls skip dynamo, yet compute (and mutate) exactly what the compiled function does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from conftest import COMPILE_TIMEOUT_S
from torch import Tensor

from rsa_service.backends.engine.accel.inductor import input_guards_only, lower_as_stored_copy
from rsa_service.backends.engine.compiler import Compiled

pytestmark = pytest.mark.timeout(COMPILE_TIMEOUT_S)  # every test here compiles

CPU = torch.device("cpu")


class Scale(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.linspace(0.5, 2.0, 8), requires_grad=False)  # as the loader leaves it


def step(model: Scale, x: Tensor, width: Tensor, states: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """A decode step in miniature: reads a dynamic prefix of each buffer, writes one column in place."""
    total = x * model.weight
    for keys, counts in states:
        keys[:, width.shape[0] - 1] = total
        counts += 1
        total = total + keys[:, : width.shape[0]].sum(1)
    return total, total.sum()


def _states(columns: int) -> list[tuple[Tensor, Tensor]]:
    return [(torch.zeros(8, columns), torch.zeros(2)) for _ in range(3)]


def _counting(compiled: Compiled) -> list[int]:
    """Counts the calls that go through dynamo (the compiled function itself)."""
    calls = [0]
    inner = compiled._fn

    def counted(*args: Any) -> Any:
        calls[0] += 1
        return inner(*args)

    compiled._fn = counted
    return calls


def _run(compiled: Compiled, model: Scale, states: list[tuple[Tensor, Tensor]], width: int, seed: int) -> Any:
    x = torch.randn(8, generator=torch.Generator().manual_seed(seed))
    mark = torch.zeros(width)
    for keys, _ in states:
        torch._dynamo.maybe_mark_dynamic(keys, 1)
    torch._dynamo.maybe_mark_dynamic(mark, 0)
    return compiled.replay((width, states[0][0].shape), model, x, mark, states)


def test_replay_skips_dynamo_and_matches_eager() -> None:
    model = Scale()
    compiled = Compiled(step, enabled=True, device=CPU, dynamic=False, guard_filter=input_guards_only)
    calls = _counting(compiled)
    # Two sets of buffers of one shape, taken in turn: a replay must use the buffers it is handed.
    pairs = [(_states(16), _states(16)) for _ in range(2)]
    for i, width in enumerate([3, 3, 3, 3, 5, 5, 5, 3]):
        ours, reference = pairs[i % 2]
        got = _run(compiled, model, ours, width, seed=i)
        want = step(model, torch.randn(8, generator=torch.Generator().manual_seed(i)), torch.zeros(width), reference)
        assert isinstance(got, tuple) and len(got) == 2
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b)
        for (k1, c1), (k2, c2) in zip(ours, reference, strict=True):
            torch.testing.assert_close(k1, k2)
            torch.testing.assert_close(c1, c2)
    assert calls[0] == 2  # the first call of each key; widths 3 and 5 share one graph with a dynamic width
    shape = pairs[0][0][0][0].shape
    assert compiled.planned((3, shape)) and compiled.planned((5, shape)) and not compiled.planned((4, shape))
    assert compiled._plans[(3, shape)].graph is not None  # inductor's graph called without AOT autograd's wrappers

    # Grown buffers (a new key): through dynamo once, then replayed against the new buffers.
    ours, reference = _states(32), _states(32)
    for i in range(3):
        got = _run(compiled, model, ours, 20, seed=10 + i)
        want = step(model, torch.randn(8, generator=torch.Generator().manual_seed(10 + i)), torch.zeros(20), reference)
        torch.testing.assert_close(got[0], want[0])
        torch.testing.assert_close(ours[2][0], reference[2][0])
    assert calls[0] == 3
    compiled(model, torch.ones(8), torch.zeros(20), ours)  # a plain call: nothing recorded, no tensor kept
    assert compiled._ran is None


def _with_break(model: Scale, x: Tensor, width: Tensor, states: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    states[0][1].add_(1)
    torch._dynamo.graph_break()
    return step(model, x, width, states)


def _returns_a_view(
    model: Scale, x: Tensor, width: Tensor, states: list[tuple[Tensor, Tensor]]
) -> tuple[Tensor, Tensor]:
    total = step(model, x, width, states)[0]
    return total, states[0][0][:, 1:3]


def test_replay_leaves_aot_autograd_to_rebuild_an_output_that_views_an_input() -> None:
    model = Scale()
    compiled = Compiled(_returns_a_view, enabled=True, device=CPU, dynamic=False, guard_filter=input_guards_only)
    ours, reference = _states(8), _states(8)
    for i in range(3):
        got = _run(compiled, model, ours, 4, seed=i)
        want = _returns_a_view(
            model, torch.randn(8, generator=torch.Generator().manual_seed(i)), torch.zeros(4), reference
        )
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b)
        assert got[1]._base is ours[0][0]  # a view of the buffer handed in, as eager returns
    plan = compiled._plans[(4, ours[0][0].shape)]
    assert plan is not None and plan.graph is None


def _single(model: Scale, x: Tensor, width: Tensor, states: list[tuple[Tensor, Tensor]]) -> Tensor:
    return step(model, x, width, states)[0]


@pytest.mark.parametrize("fn", [_with_break, _single], ids=["graph break", "not a tuple"])
def test_replay_goes_through_dynamo_when_one_graph_does_not_return_the_result(fn: Callable[..., Any]) -> None:
    """Replaying one graph would skip work done outside it (a graph break) or return the wrong structure."""
    model = Scale()
    compiled = Compiled(fn, enabled=True, device=CPU, dynamic=False, guard_filter=input_guards_only)
    calls = _counting(compiled)
    ours, reference = _states(8), _states(8)
    for i in range(3):
        got = _run(compiled, model, ours, 4, seed=i)
        want = fn(model, torch.randn(8, generator=torch.Generator().manual_seed(i)), torch.zeros(4), reference)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(ours[0][1], reference[0][1])
    assert calls[0] == 3
    assert not compiled.planned((4, ours[0][0].shape))  # dynamo reads the dynamic marks on every call


def test_replay_runs_eagerly_when_compiling_is_off() -> None:
    model = Scale()
    compiled = Compiled(step, enabled=False, device=CPU, dynamic=False)
    ours, reference = _states(8), _states(8)
    for i in range(2):
        got = _run(compiled, model, ours, 4, seed=i)
        want = step(model, torch.randn(8, generator=torch.Generator().manual_seed(i)), torch.zeros(4), reference)
        torch.testing.assert_close(got, want)


_TEST_LIBRARY = torch.library.Library("zaya_test", "DEF")
_TEST_LIBRARY.define("copy(Tensor x) -> Tensor")
_TEST_LIBRARY.impl("copy", torch.clone, "CompositeExplicitAutograd")


def _normed_product(weight: Tensor, x: Tensor) -> Tensor:
    normed = torch.ops.zaya_test.copy(x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))
    return (weight * normed[:, None, :]).sum(-1)  # a multiply-reduce reading the copy in every row


def test_a_stored_copy_is_a_buffer_of_the_generated_kernels_not_an_extern_call() -> None:
    from torch._inductor.utils import fresh_cache, run_and_get_code

    weight, x = torch.randn(64, 32), torch.randn(2, 32)
    plain = Compiled(_normed_product, enabled=True, device=CPU, dynamic=False)
    with fresh_cache():
        _, (extern,) = run_and_get_code(plain, weight, x)
    assert "torch.ops.zaya_test.copy.default(" in extern  # without: inductor keeps the op as a call

    lower_as_stored_copy(torch.ops.zaya_test.copy.default)
    stored = Compiled(_normed_product, enabled=True, device=CPU, dynamic=False)
    with fresh_cache():
        got, (code,) = run_and_get_code(stored, weight, x)
    assert "torch.ops.zaya_test.copy.default(" not in code
    assert code.count("cpp_fused") < extern.count("cpp_fused")  # the kernels either side of it fused
    torch.testing.assert_close(got, _normed_product(weight, x))
