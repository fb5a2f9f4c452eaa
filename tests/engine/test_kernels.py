"""The hand-written CPU kernels (`engine/accel/kernels.cpp`) against torch's own ops, and the fallback without them.

The kernels are built on first use (~5-10 s, cached). On a CPU without AVX-512 (BF16 for bf16) the comparisons
skip; the fallback tests run everywhere.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

import torch
import torch.nn.functional as F

from rsa_service.backends.engine.accel import kernels

pytestmark = pytest.mark.engine

CPU = torch.device("cpu")
DTYPES = [torch.float32, torch.bfloat16]
# fp32 sums in another order; bf16 also rounds its output once.
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def _need(dtype: torch.dtype) -> None:
    if not kernels.available(dtype, CPU):
        pytest.skip(f"no zaya_kernels for {dtype} on this machine")


def _relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours.float() - reference).abs().max() / reference.abs().max()).item()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("rows", "k", "n"), [(1, 64, 40), (3, 48, 7), (16, 96, 130), (5, 33, 9)])
def test_gemv_matches_a_matmul(dtype: torch.dtype, rows: int, k: int, n: int) -> None:
    """Full and partial vectors (k not a multiple of 16 or 32), partial weight tiles, 1-4 rows and several blocks."""
    _need(dtype)
    gen = torch.Generator().manual_seed(rows)
    x, weight = torch.randn(rows, k, generator=gen).to(dtype), torch.randn(n, k, generator=gen).to(dtype)
    out = kernels.gemv(x, weight)
    assert out.dtype == dtype and out.shape == (rows, n)
    assert _relative_error(out, x.float() @ weight.float().T) < TOLERANCE[dtype]
    assert kernels.gemv(x[None], weight).shape == (1, rows, n)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("route", [[2], [0, 0], [1, 3, 1, 4, 0, 1, 5], [3] * 6 + [0] * 5 + [4, 5, 1, 2, 2]])
def test_routed_gemv_reads_each_rows_expert(dtype: torch.dtype, route: list[int]) -> None:
    """Repeated experts, every expert, and rows routed to the skip (E) and padding (E + 1) routes, which get zeros."""
    _need(dtype)
    experts, k, n = 4, 40, 24
    gen = torch.Generator().manual_seed(len(route))
    x = torch.randn(len(route), k, generator=gen).to(dtype)
    weight = torch.randn(experts, n, k, generator=gen).to(dtype)
    routes = torch.tensor(route)
    expected = torch.stack(
        [weight[e].float() @ row.float() if e < experts else torch.zeros(n) for row, e in zip(x, route, strict=True)]
    )
    assert _relative_error(kernels.gemv(x, weight, routes), expected) < TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("rows", "heads", "kv_heads", "head_dim", "width"),
    [
        (1, 8, 2, 64, 160),
        (3, 6, 3, 8, 33),
        (2, 2, 1, 32, 64),
        (4, 10, 2, 16, 17),
        (16, 8, 2, 64, 192),
        (2, 8, 2, 128, 700),
    ],
)
def test_decode_attention_matches_sdpa(
    dtype: torch.dtype, rows: int, heads: int, kv_heads: int, head_dim: int, width: int
) -> None:
    """Views into a larger cache (as the decode step passes them), GQA groups of 1-5 query heads, head dims below and
    above one vector, widths not a multiple of 16 and beyond one block of values, a prefix mask per row and one with
    holes."""
    _need(dtype)
    gen = torch.Generator().manual_seed(width)
    keys, values = (torch.randn(rows + 2, kv_heads, width + 40, head_dim, generator=gen).to(dtype) for _ in range(2))
    q = torch.randn(rows, heads, head_dim, generator=gen).to(dtype)
    positions = torch.randint(0, width, (rows,), generator=gen)
    mask = (torch.arange(width) <= positions[:, None])[:, None, None]
    mask[0, ..., 0] = True
    mask[-1, ..., 1::3] = False  # not a prefix: every third column hidden
    mask[-1, ..., 0] = True
    k, v = keys[:rows, :, :width], values[:rows, :, :width]
    expected = F.scaled_dot_product_attention(
        q[:, :, None].float(), k.float(), v.float(), attn_mask=mask, scale=0.3, enable_gqa=True
    ).flatten(1)
    out = kernels.decode_attention(q, k, v, mask, 0.3)
    assert out.dtype == dtype and out.shape == (rows, heads * head_dim)
    assert _relative_error(out, expected) < TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("queries", "group", "start"), [(128, 4, 1920), (128, 4, 0), (5, 3, 32), (17, 2, 10)])
def test_causal_softmax_matches_a_masked_softmax(dtype: torch.dtype, queries: int, group: int, start: int) -> None:
    """Queries at start.. against every key up to the block's end: the first block, a later one, and widths that are
    not a multiple of 16; in place, with the hidden keys' probabilities exactly 0."""
    _need(dtype)
    gen = torch.Generator().manual_seed(start)
    scores = (torch.randn(queries, group, start + queries, generator=gen) * 4).to(dtype)
    hidden = torch.arange(start + queries) > (start + torch.arange(queries))[:, None]  # key after the query
    expected = torch.softmax(scores.masked_fill(hidden[:, None], float("-inf")), dim=-1)
    torch.ops.zaya_kernels.causal_softmax_(scores, start)
    torch.testing.assert_close(scores, expected, atol=TOLERANCE[dtype], rtol=0)
    assert not scores[hidden[:, None].expand_as(scores)].any()


def test_causal_softmax_refuses_keys_short_of_the_queries() -> None:
    _need(torch.float32)
    with pytest.raises(RuntimeError, match="need keys up to their own positions"):
        torch.ops.zaya_kernels.causal_softmax_(torch.zeros(8, 2, 12), 5)


def _decode_steps(runner: object, vocab: int) -> torch.Tensor:
    """Prefill 8 rows, then decode steps of batches 1, 2, 8 (experts repeated across rows) and 3 (rows left out)."""
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, vocab, (5 + row,), generator=gen).tolist() for row in range(8)]
    fed = torch.randint(3, vocab, (4, 8), generator=gen).tolist()
    runner.reserve(8, 32)
    runner.prefill(list(range(8)), prompts, [0] * 8)
    steps = []
    for i, rows in enumerate([[0], [0, 1], list(range(8)), [0, 3, 5]]):
        positions = [len(prompts[row]) + i for row in rows]
        steps.append(runner.decode(rows, [fed[i][row] for row in rows], positions))
    return torch.cat(steps)


def test_decode_with_kernels_matches_decode_without(checkpoints_dir: dict[str, Path], open_engine) -> None:
    """The same eager decode steps with the kernels and with the fallback path (SDPA, experts dispatched grouped).

    fp32: equal to summation order. bf16: a one-ulp difference can flip a route of the tiny model, so neither bf16
    path is compared with the other; each is compared with the fp32 steps, and the kernels' error must stay within
    the fallback's (with margin) - a wrong kernel is off by far more."""
    _need(torch.float32)
    _need(torch.bfloat16)
    directory = checkpoints_dir["tied"]
    results = {}
    for dtype in DTYPES:
        for use in (True, False):
            config, runner, _ = open_engine(directory, dtype=dtype)
            assert runner.decoder.kernels
            runner.decoder.kernels = use
            results[dtype, use] = _decode_steps(runner, config.vocab_size)
    exact = results[torch.float32, False]
    assert _relative_error(results[torch.float32, True], exact) < 1e-5
    fallback = _relative_error(results[torch.bfloat16, False], exact)
    assert _relative_error(results[torch.bfloat16, True], exact) < 1.5 * fallback + 0.02, fallback


def test_disabled_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(kernels.KERNELS_ENV, "0")
    kernels._load.cache_clear()
    kernels.available.cache_clear()
    try:
        assert not kernels.available(torch.float32, CPU)
    finally:
        kernels._load.cache_clear()
        kernels.available.cache_clear()


def test_a_failed_build_is_logged_once_and_falls_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from torch.utils import cpp_extension

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(cpp_extension, "load", broken)
    kernels._load.cache_clear()
    kernels.available.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger=kernels.__name__):
            assert not kernels.available(torch.float32, CPU)
            assert not kernels.available(torch.bfloat16, CPU)
        assert [r.getMessage() for r in caplog.records].count(
            "engine: CPU kernels unavailable, using the generic path: no compiler here"
        ) == (1 if kernels.platform.machine().lower() in {"x86_64", "amd64"} else 0)
    finally:
        kernels._load.cache_clear()
        kernels.available.cache_clear()
    assert not kernels.available(torch.float32, torch.device("meta"))


def test_the_build_finds_ninja_beside_the_interpreter_and_leaves_path_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine extra's ninja sits in the interpreter's scripts directory; PATH only gains it for the build, so
    the rest of the process (which redis-server the tests start, for one) is untouched."""
    from torch.utils import cpp_extension

    seen: list[str] = []
    monkeypatch.setattr(cpp_extension, "load", lambda *args, **kwargs: seen.append(os.environ["PATH"]))
    monkeypatch.setattr(kernels, "_register_shapes", lambda: None)
    monkeypatch.setenv("PATH", "/nowhere")
    kernels._load.cache_clear()
    try:
        kernels._load()
    finally:
        kernels._load.cache_clear()
        kernels.available.cache_clear()
    assert seen == [os.pathsep.join(["/nowhere", str(Path(sys.executable).parent)])]
    assert os.environ["PATH"] == "/nowhere"
