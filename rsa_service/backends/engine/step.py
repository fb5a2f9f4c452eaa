"""What a pass hands the model besides its tokens: the cache rows' state, where the new tokens sit, and `Ops`.

The model says what to compute; `Ops` (implemented by `dispatch.Dispatch`) decides how each weight product, the
attention and the expert dispatch run on this device, at this row count, compiled or not. A pass builds one for the
whole step, so no flag is threaded through the model's methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol

from torch import Tensor, nn

if TYPE_CHECKING:
    from rsa_service.backends.engine.model import Experts


class LayerState(NamedTuple):
    """One layer's cache buffers, indexed by cache row (slot). Updated in place by the forward pass."""

    keys: Tensor  # [S, nkv, L+1, hd] post-RoPE keys, head-major so a column prefix is a view; column L is scratch
    values: Tensor  # [S, nkv, L+1, hd]
    conv: Tensor  # [S, W, C] pre-conv q|k of the last W tokens, time-major: a decode step reads whole channel rows
    delayed: Tensor  # [S, Dv] the last token's delayed value projection


@dataclass(frozen=True)
class StepContext:
    """Where a batch of new tokens sits: which cache rows, which columns, which positions, which are padding."""

    rows: Tensor  # [B] cache rows
    write_cols: Tensor  # [B, T] cache column per new token (padding → scratch column)
    last: Tensor  # [B] index in T of each sequence's last real token
    valid: Tensor  # [B, T] bool, real tokens
    positions: Tensor  # [B, T] absolute positions
    width: int  # K, cache columns read
    mask: Tensor | None  # [B, 1, T, K] bool, True where a query may read a cache column; None: plain causal


class Ops(Protocol):
    """How one pass runs the model's weight products, attention and experts (see `dispatch.Dispatch`)."""

    def vector(self, x: Tensor) -> Tensor:
        """x [B, K], the vector a run of decode-step weight products reads, computed once for all of them."""
        ...

    def linear(self, layer: nn.Module, x: Tensor) -> Tensor:
        """x [..., K] times `layer`'s weight [N, K]ᵀ (plus its bias, if any) → [..., N]."""
        ...

    def grouped_gemv(self, x: Tensor, weight: Tensor) -> Tensor:
        """x [B, G, K], weight [G, N, K] → [B, G, N]: row b's group g times group g's weight."""
        ...

    def time_conv(self, x: Tensor, conv: nn.Conv1d) -> Tensor:
        """`conv` over time-major x [B, L, C] → [B, L - t + 1, C]."""
        ...

    def attend(self, queries: Tensor, keys: Tensor, values: Tensor, state: LayerState, ctx: StepContext) -> Tensor:
        """Causal attention of new tokens (`attention.attention_layout`'s layout) → [B, T, nh·hd]: over themselves
        when every row starts fresh (`ctx.mask` None), else over the first `ctx.width` cache columns of `ctx.rows`
        (their keys and values already written)."""
        ...

    def decode_attention(self, q: Tensor, keys: Tensor, values: Tensor, mask: Tensor, scale: float) -> Tensor:
        """One query token per row: q [B, nh, 1, hd], keys and values [B, nkv, K, hd], mask [B, 1, 1, K] →
        [B, nh·hd]; query head j reads KV head j // (nh / nkv)."""
        ...

    def experts(
        self, experts: Experts, x: Tensor, route: Tensor, weight: Tensor, skip_returns_input: bool
    ) -> tuple[Tensor, int]:
        """Prefill: x [N, H], route [N], weight [N] → output [N, H], skip routes taken."""
        ...

    def decode_experts(
        self, experts: Experts, x: Tensor, route: Tensor, weight: Tensor, skip_returns_input: bool
    ) -> Tensor:
        """A decode step's experts: x [B, H], route [B], weight [B] → [B, H]."""
        ...

    def embed(self, embedding: nn.Embedding, tokens: Tensor) -> Tensor:
        """tokens [...] → their embedding rows [..., H] in the compute dtype."""
        ...


@dataclass(frozen=True)
class DecodeContext:
    """What every layer of a decode step shares (see `ZayaForCausalLM.decode_step`)."""

    active: Tensor  # [B] bool, rows that decode a token
    cols: Tensor  # [B] cache column each row writes (inactive rows: the scratch column)
    mask: Tensor  # [B, 1, 1, K] bool, the cache columns each row reads
    rope: tuple[Tensor, Tensor]  # cos, sin [B, 1, rot]
    skip_returns_input: bool
    ops: Ops
