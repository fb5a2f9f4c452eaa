"""ZAYA1 in plain PyTorch: CCA attention + top-1 MoE with a skip route, fp32 residual stream.

Module and parameter names follow the published checkpoint keys, so a checkpoint's tensors map one-to-one onto
`ZayaForCausalLM.state_dict()`. Every pass runs against per-sequence state held in cache buffers
(KV, conv state, delayed value), updated in place. `forward` is the prefill pass (any rows, T new tokens each, also
used for chunked prefill and scoring); `decode_step` is one token for each of the leading B cache rows at fixed
shapes, written so the engine can compile it whole. How weight products, attention and expert dispatch run is the
pass's `Ops` (`step`), so this file says only what the model computes.

Shapes: B sequences, T new tokens each, H hidden, R router hidden, E experts, L layers, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsa_service.backends.engine.attention import AttentionInputs, CCAttention, apply_rope
from rsa_service.backends.engine.config import ZayaDims
from rsa_service.backends.engine.step import DecodeContext, LayerState, Ops, StepContext


class DecodeOut(NamedTuple):
    residual: Tensor  # [B, H] fp32
    carried: Tensor  # [B, R] router state
    skips: Tensor  # 0-d, skip routes taken


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size, dtype=dtype))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        # Statistics in fp32, then back to the input dtype before the weight, as the reference does.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class ResidualScale(nn.Module):
    """A merge point of the fp32 residual stream: (h + h_bias)·h_scale + (res + res_bias)·res_scale."""

    def __init__(self, hidden: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.hidden_states_scale = nn.Parameter(torch.ones(hidden, dtype=dtype))
        self.hidden_states_bias = nn.Parameter(torch.zeros(hidden, dtype=dtype))
        self.residual_scale = nn.Parameter(torch.ones(hidden, dtype=dtype))
        self.residual_bias = nn.Parameter(torch.zeros(hidden, dtype=dtype))

    def forward(self, h: Tensor, residual: Tensor) -> Tensor:
        return (h + self.hidden_states_bias) * self.hidden_states_scale + (
            residual + self.residual_bias
        ) * self.residual_scale


class RouterMLP(nn.Module):
    def __init__(self, dims: ZayaDims, dtype: torch.dtype) -> None:
        super().__init__()
        r = dims.router_hidden_size
        self.norm = RMSNorm(r, dims.rms_norm_eps, dtype)
        self.fc1 = nn.Linear(r, r, dtype=dtype)
        self.fc2 = nn.Linear(r, r, dtype=dtype)
        self.out_proj = nn.Linear(r, dims.num_experts + 1, bias=False, dtype=dtype)

    def forward(self, state: Tensor, ops: Ops) -> Tensor:
        h = F.gelu(ops.linear(self.fc1, self.norm(state)))  # exact (erf) GELU
        return ops.linear(self.out_proj, F.gelu(ops.linear(self.fc2, h)))


class Router(nn.Module):
    """Top-1 choice over E experts + 1 skip route, biased by the stored balancer biases (choice only)."""

    def __init__(self, dims: ZayaDims, layer: int, dtype: torch.dtype) -> None:
        super().__init__()
        r = dims.router_hidden_size
        self.down_proj = nn.Linear(dims.hidden_size, r, dtype=dtype)
        # Depth averaging: from the second layer on, the previous layer's router state joins in.
        self.router_states_scale = nn.Parameter(torch.ones(r, dtype=dtype)) if layer > 0 else None
        self.router_mlp = RouterMLP(dims, dtype)
        self.register_buffer("balancing_biases", torch.zeros(dims.num_experts + 1, dtype=torch.float32))

    def forward(self, x: Tensor, carried: Tensor | None, ops: Ops) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, T, H] → route [B, T], weight [B, T] (fp32, unbiased probability), state [B, T, R]."""
        state = ops.linear(self.down_proj, x)
        if self.router_states_scale is not None and carried is not None:
            state = state + carried * self.router_states_scale
        # fp32 softmax so near-ties route the same way across dtypes.
        probs = torch.softmax(self.router_mlp(state, ops).float(), dim=-1)
        route = (probs + self.balancing_biases).argmax(dim=-1)
        return route, probs.gather(-1, route[..., None])[..., 0], state


class Experts(nn.Module):
    """SwiGLU experts stored stacked, gate|up fused (first half gate). Route E is the skip route, E + 1 padding.

    The pass's `Ops` runs them: grouped by expert, or gathered per row in a compiled decode step."""

    def __init__(self, dims: ZayaDims, dtype: torch.dtype) -> None:
        super().__init__()
        e, h, i = dims.num_experts, dims.hidden_size, dims.moe_intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(e, 2 * i, h, dtype=dtype))
        self.down_proj = nn.Parameter(torch.empty(e, h, i, dtype=dtype))
        self.compute_dtype = dtype


class MoE(nn.Module):
    def __init__(self, dims: ZayaDims, layer: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.gate = Router(dims, layer, dtype)
        self.experts = Experts(dims, dtype)

    def route(self, x: Tensor, carried: Tensor | None, valid: Tensor, ops: Ops) -> tuple[Tensor, Tensor, Tensor]:
        """x [..., H] → route [...] (padding → E + 1), weight [...], router state [..., R]."""
        route, weight, state = self.gate(x, carried, ops)
        return torch.where(valid, route, self.experts.gate_up_proj.shape[0] + 1), weight, state


class Routed(NamedTuple):
    """A prefill layer's state between its router and its experts."""

    residual: Tensor  # [B, T, H] fp32, after the attention's merge
    x: Tensor  # [B, T, H] the experts' input
    route: Tensor  # [B, T] (padding → E + 1)
    weight: Tensor  # [B, T]
    carried: Tensor  # [B, T, R] router state


class DecoderLayer(nn.Module):
    def __init__(self, dims: ZayaDims, layer: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(dims.hidden_size, dims.rms_norm_eps, dtype)
        self.self_attn = CCAttention(dims, dtype)
        self.post_attention_residual_scale = ResidualScale(dims.hidden_size, dtype)
        self.post_attention_layernorm = RMSNorm(dims.hidden_size, dims.rms_norm_eps, dtype)
        self.mlp = MoE(dims, layer, dtype)
        self.post_mlp_residual_scale = ResidualScale(dims.hidden_size, dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.input_layernorm.weight.dtype

    def attention_inputs(
        self, residual: Tensor, conv: Tensor, delayed: Tensor, last: Tensor, cos: Tensor, sin: Tensor, ops: Ops
    ) -> AttentionInputs:
        """Prefill up to the attention: residual [B, T, H] fp32 → the attention's operands, conv and delayed state."""
        x = self.input_layernorm(residual.to(self.dtype))
        return self.self_attn.inputs(x, conv, delayed, last, cos, sin, ops)

    def routed(self, attended: Tensor, residual: Tensor, carried: Tensor | None, valid: Tensor, ops: Ops) -> Routed:
        """Prefill from the attention's output [B, T, nh·hd] to the experts: o_proj, residual merge, norm, router."""
        residual = self.post_attention_residual_scale(ops.linear(self.self_attn.o_proj, attended), residual)
        x = self.post_attention_layernorm(residual.to(self.dtype))
        return Routed(residual, x, *self.mlp.route(x, carried, valid, ops))

    def forward(
        self,
        residual: Tensor,
        carried: Tensor | None,
        ctx: StepContext,
        rope: tuple[Tensor, Tensor],
        state: LayerState,
        skip_returns_input: bool,
        pieces: PrefillOps,
    ) -> tuple[Tensor, Tensor, int]:
        """residual [B, T, H] fp32 → residual, router state, skip count. The pieces between the cache writes, the
        attention and the expert dispatch (which stay eager: per-row loops, data-dependent expert calls) run through
        `pieces`."""
        rows, ops = ctx.rows, pieces.ops
        inputs = pieces.attention_inputs(self, residual, state.conv[rows], state.delayed[rows], ctx.last, *rope, ops)
        state.conv[rows], state.delayed[rows] = inputs.conv, inputs.delayed
        r = pieces.routed(self, self.self_attn.attend(inputs, ctx, state, ops), residual, carried, ctx.valid, ops)
        x, route, weight = r.x.flatten(0, 1), r.route.flatten(), r.weight.flatten()
        out, skips = ops.experts(self.mlp.experts, x, route, weight, skip_returns_input)
        return pieces.merge(self.post_mlp_residual_scale, out.view_as(r.x), r.residual), r.carried, skips

    def decode(self, residual: Tensor, carried: Tensor | None, step: DecodeContext, state: LayerState) -> DecodeOut:
        """One token per row: residual [B, H] fp32 → residual, router state [B, R], skip routes taken (0-d)."""
        attn, ops = self.self_attn, step.ops
        x = ops.vector(self.input_layernorm(residual.to(self.dtype)))
        q, k, v = attn.qkv_proj.decode(x, step.active, state, ops)
        q, k = attn.qk_norm(q, k)
        q, k = apply_rope(q, *step.rope)[:, :, None], apply_rope(k, *step.rope)
        attended = attn.decode_attend(q, k, v, step.cols, step.mask, state, ops)
        residual = self.post_attention_residual_scale(ops.linear(attn.o_proj, attended), residual)
        x = ops.vector(self.post_attention_layernorm(residual.to(self.dtype)))
        route, weight, carried = self.mlp.route(x, carried, step.active, ops)
        experts = self.mlp.experts
        out = ops.decode_experts(experts, x, route, weight, step.skip_returns_input)
        skips = (route == experts.gate_up_proj.shape[0]).sum()
        return DecodeOut(self.post_mlp_residual_scale(out, residual), carried, skips)


class PrefillOps(NamedTuple):
    """The prefill pass's `Ops`, and the functions it runs each layer's pieces through: these, or compiled ones
    (`prefill`)."""

    ops: Ops
    attention_inputs: Callable[..., AttentionInputs] = DecoderLayer.attention_inputs
    routed: Callable[..., Routed] = DecoderLayer.routed
    merge: Callable[[ResidualScale, Tensor, Tensor], Tensor] = ResidualScale.forward


class ZayaBackbone(nn.Module):
    def __init__(self, dims: ZayaDims, dtype: torch.dtype) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(dims.vocab_size, dims.hidden_size, dtype=dtype)
        self.input_hidden_states_scale = nn.Parameter(torch.ones(dims.hidden_size, dtype=dtype))
        self.input_hidden_states_bias = nn.Parameter(torch.zeros(dims.hidden_size, dtype=dtype))
        self.layers = nn.ModuleList(DecoderLayer(dims, i, dtype) for i in range(dims.num_hidden_layers))
        self.norm = RMSNorm(dims.hidden_size, dims.rms_norm_eps, dtype)


class ZayaForCausalLM(nn.Module):
    """The whole model. `skip_returns_input` selects the release-time skip route (probability × input)."""

    def __init__(self, dims: ZayaDims, dtype: torch.dtype, *, skip_returns_input: bool = False) -> None:
        super().__init__()
        self.model = ZayaBackbone(dims, dtype)
        self.lm_head = (
            None if dims.tie_word_embeddings else nn.Linear(dims.hidden_size, dims.vocab_size, bias=False, dtype=dtype)
        )
        self.skip_returns_input = skip_returns_input
        self.rope_theta, self.rotary_dim = dims.rope_theta, dims.rotary_dim

    @property
    def dtype(self) -> torch.dtype:
        return self.model.norm.weight.dtype

    def decoder_layers(self) -> list[DecoderLayer]:
        """The layers, typed as what they are (iterating a ModuleList yields plain Modules)."""
        return [cast(DecoderLayer, layer) for layer in self.model.layers]

    def rope(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """positions [...] → cos, sin [..., 1, rot], computed in fp32 and cast to the compute dtype."""
        exponents = torch.arange(0, self.rotary_dim, 2, dtype=torch.float32, device=positions.device) / self.rotary_dim
        inv_freq = 1.0 / (self.rope_theta**exponents)
        freqs = positions[..., None].float() * inv_freq  # [..., rot/2]
        angles = torch.cat([freqs, freqs], dim=-1)[..., None, :]
        return angles.cos().to(self.dtype), angles.sin().to(self.dtype)

    def embed(self, tokens: Tensor, ops: Ops) -> Tensor:
        """tokens [...] → fp32 residual [..., H]."""
        core = self.model
        embedded = ops.embed(core.embed_tokens, tokens)
        return ((embedded + core.input_hidden_states_bias) * core.input_hidden_states_scale).float()

    def forward(
        self, tokens: Tensor, ctx: StepContext, states: list[LayerState], pieces: PrefillOps
    ) -> tuple[Tensor, list[int]]:
        """Prefill: tokens [B, T] → final normed hidden [B, T, H] (compute dtype), skip routes per layer."""
        residual = self.embed(tokens, pieces.ops)
        rope = self.rope(ctx.positions)
        carried: Tensor | None = None
        skips = []
        for layer, state in zip(self.model.layers, states, strict=True):
            residual, carried, taken = layer(residual, carried, ctx, rope, state, self.skip_returns_input, pieces)
            skips.append(taken)
        return self.model.norm(residual.to(self.dtype)), skips

    def decode_step(
        self, tokens: Tensor, positions: Tensor, active: Tensor, mask: Tensor, states: list[LayerState], ops: Ops
    ) -> tuple[Tensor, Tensor]:
        """One token for each of the leading B cache rows: tokens, positions, active [B], mask [B, 1, 1, K] (the
        cache columns each row reads) → fp32 logits [B, V], skip routes per layer [L].

        Inactive rows (mid-prefill or empty) leave their state untouched and write their KV to the scratch column.
        """
        cols = torch.where(active, positions, states[0].keys.shape[2] - 1)
        step = DecodeContext(active, cols, mask, self.rope(positions), self.skip_returns_input, ops)
        residual, carried = self.embed(tokens, ops), None
        skips = []
        for layer, state in zip(self.model.layers, states, strict=True):
            residual, carried, taken = layer.decode(residual, carried, step, state)
            skips.append(taken)
        hidden = ops.vector(self.model.norm(residual.to(self.dtype)))
        return ops.linear(self.output_layer(), hidden).float(), torch.stack(skips)

    def logits(self, hidden: Tensor, ops: Ops) -> Tensor:
        """hidden [..., H] → fp32 logits [..., V]."""
        return ops.linear(self.output_layer(), hidden).float()

    def output_layer(self) -> nn.Module:
        """The logits' weight holder: the tied embedding, or the separate head."""
        return self.model.embed_tokens if self.lm_head is None else self.lm_head
