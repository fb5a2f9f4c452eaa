"""The prefill pass's small ops compiled, piece by piece, once for every row count and token count.

Between its GEMMs a prefill layer runs norms, the CCA convs' concatenations and mean paths, q/k normalisation, RoPE,
layout copies, residual merges and the router, op by op: eagerly each is a pass over memory, together a large share
of a long prefill. Compiled, inductor fuses each piece between the cache writes, the attention and the expert
dispatch (see `PrefillOps`, which stay eager: per-row loops and data-dependent expert calls) into a few loops around
the same oneDNN GEMMs. Rows B and tokens T are symbolic and, as size-oblivious sizes, never specialised to 1, so one
graph per piece serves every chunk, batch and single-token piece (`routed` compiles a second for the first layer,
which has no router state to carry). Compiled under the decode step's switch (`compiler.compile_enabled`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx.experimental._config as fx_config
from torch import nn

from rsa_service.backends.engine.compiler import Compiled
from rsa_service.backends.engine.dispatch import Dispatch
from rsa_service.backends.engine.model import DecoderLayer, PrefillOps, ResidualScale
from rsa_service.backends.engine.ops import ExpertMLP

TOKENS, ROWS, NONE = (0, 1), (0,), ()  # the symbolic dimensions of a [B, T, ...] and a [B, ...] argument


class _Piece:
    """`fn(module, *args)` compiled with dimensions `dims[i]` of tensor argument `args[i]` symbolic."""

    def __init__(self, fn: Any, dims: tuple[tuple[int, ...], ...], *, enabled: bool, device: torch.device) -> None:
        self._compiled = Compiled(fn, enabled=enabled, device=device, dynamic=None)
        self._dims = dims

    @property
    def compiled(self) -> bool:
        """Compiling, or compiled: not fallen back to eager."""
        return self._compiled.compiled

    def __call__(self, module: nn.Module, *args: Any) -> Any:
        if not self._compiled.compiled:
            return self._compiled(module, *args)
        for arg, dims in zip(args, self._dims, strict=True):
            for dim in dims if isinstance(arg, torch.Tensor) else ():
                torch._dynamo.maybe_mark_dynamic(arg, dim)
        with fx_config.patch(backed_size_oblivious=True):
            return self._compiled(module, *args)


def prefill_ops(*, enabled: bool, device: torch.device, mlp: ExpertMLP) -> PrefillOps:
    """The prefill pieces, compiled if `enabled`; `mlp` runs each expert's tokens. Every product is a library GEMM
    (`Dispatch.dense`), whatever the row count, so one graph per piece serves every shape."""
    return PrefillOps(
        ops=Dispatch(dense=True, mlp=mlp),
        attention_inputs=_Piece(
            DecoderLayer.attention_inputs,
            (TOKENS, ROWS, ROWS, ROWS, TOKENS, TOKENS, NONE),
            enabled=enabled,
            device=device,
        ),
        routed=_Piece(DecoderLayer.routed, (*(TOKENS,) * 4, NONE), enabled=enabled, device=device),
        merge=_Piece(ResidualScale.forward, (TOKENS,) * 2, enabled=enabled, device=device),
    )
