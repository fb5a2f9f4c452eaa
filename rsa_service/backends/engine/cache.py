"""Per-sequence decoding state (KV + conv state + delayed value) in buffers allocated at a high-water mark.

Each sequence owns one row ("slot") of every buffer. Buffers only grow, when a sequence is admitted that needs more
rows or columns than any before it; the forward pass then updates them in place, so a decode step allocates no
cache memory, and decode reads the leading rows and columns through views. A sequence's whole state can be forked
into other rows after a shared prefix has been prefilled once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from rsa_service.backends.engine.config import ZayaDims, conv_state_width
from rsa_service.backends.engine.step import LayerState, StepContext

# Columns are allocated in blocks so a stream of slightly longer requests does not reallocate every time.
COLUMN_BLOCK = 64


class StateCache:
    """Decoding state for `slots` sequences of up to `max_len` tokens, for every layer."""

    def __init__(self, dims: ZayaDims, dtype: torch.dtype, device: torch.device) -> None:
        self._dims, self._dtype, self._device = dims, dtype, device
        self.slots = 0
        self.max_len = 0
        self.layers: list[LayerState] = self._allocate(0, 0)

    def _allocate(self, slots: int, max_len: int) -> list[LayerState]:
        d = self._dims
        nkv, hd = d.num_key_value_heads, d.head_dim
        channels = (d.num_attention_heads + nkv) * hd

        def zeros(*shape: int) -> Tensor:
            # Zeros, not empty: masked columns still pass through softmax·V, so they must hold finite values.
            return torch.zeros(shape, dtype=self._dtype, device=self._device)

        return [
            LayerState(
                keys=zeros(slots, nkv, max_len + 1, hd),
                values=zeros(slots, nkv, max_len + 1, hd),
                conv=zeros(slots, conv_state_width(d), channels),
                delayed=zeros(slots, nkv * hd // 2),
            )
            for _ in range(d.num_hidden_layers)
        ]

    def reserve(self, slots: int, max_len: int) -> None:
        """Grow (never shrink) to hold `slots` rows of `max_len` tokens, keeping every row's contents."""
        if slots <= self.slots and max_len <= self.max_len:
            return
        new_slots = max(slots, self.slots)
        new_len = max(self.max_len, -(-max_len // COLUMN_BLOCK) * COLUMN_BLOCK)
        grown = self._allocate(new_slots, new_len)
        for old, new in zip(self.layers, grown, strict=True):
            new.keys[: self.slots, :, : self.max_len] = old.keys[:, :, : self.max_len]
            new.values[: self.slots, :, : self.max_len] = old.values[:, :, : self.max_len]
            new.conv[: self.slots] = old.conv
            new.delayed[: self.slots] = old.delayed
        self.layers, self.slots, self.max_len = grown, new_slots, new_len

    def reset(self, slots: Sequence[int]) -> None:
        """Start fresh sequences in `slots`: no conv history, no previous value. Stale KV columns stay masked."""
        rows = torch.tensor(list(slots), dtype=torch.long, device=self._device)
        for layer in self.layers:
            layer.conv[rows] = 0
            layer.delayed[rows] = 0

    def fork(self, source: int, targets: Sequence[int], length: int) -> None:
        """Give rows `targets` the state of row `source` after its first `length` tokens (KV, conv, delayed value)."""
        rows = torch.tensor(list(targets), dtype=torch.long, device=self._device)
        for layer in self.layers:
            # The source is cloned: an indexed write may not read the tensor it writes to.
            layer.keys[rows, :, :length] = layer.keys[source, :, :length].clone()
            layer.values[rows, :, :length] = layer.values[source, :, :length].clone()
            layer.conv[rows] = layer.conv[source].clone()
            layer.delayed[rows] = layer.delayed[source].clone()

    def bytes_per_token(self) -> int:
        """KV bytes one token adds (all layers); the conv and delayed-value state is per sequence, not per token."""
        d = self._dims
        return 2 * d.num_hidden_layers * d.num_key_value_heads * d.head_dim * self._dtype.itemsize

    def bytes_per_sequence(self) -> int:
        """Fixed per-sequence state besides the KV cache: conv state and delayed value, all layers."""
        d = self._dims
        channels = (d.num_attention_heads + d.num_key_value_heads) * d.head_dim
        per_layer = channels * conv_state_width(d) + d.num_key_value_heads * d.head_dim // 2
        return d.num_hidden_layers * per_layer * self._dtype.itemsize

    def context(self, rows: Sequence[int], starts: Sequence[int], lengths: Sequence[int]) -> StepContext:
        """Place `lengths[b]` new tokens of the sequence in `rows[b]` after its first `starts[b]` tokens.

        Shorter sequences are right-padded to the longest; causality keeps padding from touching real tokens,
        and padding writes land in the scratch column. When every piece starts a sequence, the columns read are
        exactly the new tokens and the mask is plain causal, left to the attention kernel (`mask` None).
        """
        dev = self._device
        start = torch.tensor(list(starts), dtype=torch.long, device=dev)
        length = torch.tensor(list(lengths), dtype=torch.long, device=dev)
        steps = torch.arange(max(lengths), device=dev)
        positions = start[:, None] + steps  # [B, T]
        valid = steps < length[:, None]  # [B, T]
        width = max(s + n for s, n in zip(starts, lengths, strict=True))
        mask = None if not any(starts) else (torch.arange(width, device=dev) <= positions[..., None])[:, None]
        return StepContext(
            rows=torch.tensor(list(rows), dtype=torch.long, device=dev),
            write_cols=torch.where(valid, positions, self.max_len),
            last=length - 1,
            valid=valid,
            positions=positions,
            width=width,
            mask=mask,  # [B, 1, T, K]
        )
