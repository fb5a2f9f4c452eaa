"""Hand-written CPU kernels for the decode step and prefill attention (`kernels.cpp`), built on first use and cached.

Two places where inductor's generated loops are compute-bound on a CPU, each output being a short reduction with
its own horizontal sum: the gathered experts (where each row would re-read its own expert) and attention at one
query. `gemv` with a route reads each expert hit once for all the rows routed to it, with AVX-512 BF16 dot products
(`_mm512_dpbf16_ps`) for bf16 and AVX-512 FMA for fp32; int8 weights (`quantize`) go against bf16 rows quantized to
int16 with AVX-512 VNNI, where inductor's loop widening them to fp32 is compute-bound too. `decode_attention`
computes sixteen scores with one combined horizontal sum and an fp32 softmax. They are `torch.library` ops defined
in C++ (`zaya_kernels::*`), so the compiled step calls them as extern kernels with no Python in between; the
engine's `dispatch` uses them when a step is told to. For prefill, `causal_softmax_` turns a block of attention
scores into probabilities in place (`dispatch.blocked_attention`).

The extension is built with torch's JIT builder (g++, which inductor needs anyway; once, then cached under torch's
extensions directory, rebuilt when kernels.cpp changes) the first time `available` is asked. Anywhere else (a torch
release `accel` does not support; no AVX-512 F, BW and VL, or no AVX-512 BF16 and VNNI for bf16; not x86; no
compiler or a failed build, logged once; a non-CPU device; RSA_ENGINE_KERNELS=0) `available` is False and the engine
keeps its generic path.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from rsa_service.backends.engine.accel import supported

logger = logging.getLogger(__name__)

KERNELS_ENV = "RSA_ENGINE_KERNELS"
_SOURCE = Path(__file__).with_name("kernels.cpp")


@contextlib.contextmanager
def _interpreter_scripts_on_path() -> Iterator[None]:
    """torch runs `ninja` from PATH, and the engine extra installs it beside this interpreter, which need not be on
    PATH (a venv used without activation). Appended, and only for the build: the process's own PATH decides
    everything else (which redis-server it starts, for one)."""
    saved = os.environ.get("PATH")
    os.environ["PATH"] = os.pathsep.join(filter(None, [saved, str(Path(sys.executable).parent)]))
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = saved


@functools.cache
def _load() -> bool:
    """Build (or reuse the cached build of) the extension and register its shape functions; False if that fails."""
    if os.environ.get(KERNELS_ENV, "").strip().lower() in {"0", "false", "no", "off"}:
        return False
    try:
        from torch.utils import cpp_extension

        with _interpreter_scripts_on_path():
            # The source's hash is part of the build's cache key, so an edited kernels.cpp is rebuilt.
            cpp_extension.load(
                name="zaya_kernels", sources=[str(_SOURCE)], extra_cflags=["-O3"], is_python_module=False
            )
    except Exception as exc:  # compiler missing, headers missing, build error: all mean "not here"
        logger.warning("engine: CPU kernels unavailable, using the generic path: %s", exc)
        return False
    _register_shapes()
    return True


@functools.cache
def _register_shapes() -> None:
    """Shape functions for the compiler's fake tensors (once per process, however often the library is loaded)."""
    torch.library.register_fake("zaya_kernels::gemv")(_gemv_shape)
    torch.library.register_fake("zaya_kernels::decode_attention")(_attention_shape)


def _attention_shape(q: Tensor, keys: Tensor, values: Tensor, mask: Tensor, scale: float) -> Tensor:
    return q.new_empty((q.shape[0], q.shape[1] * q.shape[2]))


def _gemv_shape(x: Tensor, weight: Tensor, route: Tensor | None = None, scale: Tensor | None = None) -> Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[-2]))


@functools.cache
def available(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether the `zaya_kernels` ops run for tensors of `dtype` on `device` (builds on first ask)."""
    if device.type != "cpu" or dtype not in (torch.float32, torch.bfloat16) or not supported():
        return False
    if platform.machine().lower() not in {"x86_64", "amd64"}:  # AVX-512 is x86 only: do not even try to build
        return False
    return _load() and bool(torch.ops.zaya_kernels.supports(dtype))  # the CPU's own flags, asked at run time


def gemv(x: Tensor, weight: Tensor, route: Tensor | None = None, scale: Tensor | None = None) -> Tensor:
    """x [..., K] · weight [N, K]ᵀ → [..., N]; or, with route [B], each row of x [B, K] times its own expert's
    weight[route[b]] of weight [E, N, K] (rows routed outside [0, E) get zeros). In x's dtype, fp32 accumulation;
    each weight matrix hit is read once for all the rows that use it. An int8 weight comes with its fp32 scales
    (one per weight row: [N], or [E, N]) and any x dtype the kernels run. Only where `available`."""
    return torch.ops.zaya_kernels.gemv(x, weight, route, scale)


def decode_attention(q: Tensor, keys: Tensor, values: Tensor, mask: Tensor, scale: float) -> Tensor:
    """One query token per row: q [B, nh, hd], keys and values [B, nkv, K, hd] (views into the cache: dense rows of
    hd per head), mask [B, 1, 1, K] bool → [B, nh·hd] in q's dtype; query head j reads KV head j // (nh / nkv). fp32
    scores (scaled after the dot product), softmax and sums, as the compiled step's own reduction. Only where
    `available`."""
    return torch.ops.zaya_kernels.decode_attention(q, keys, values, mask, scale)
