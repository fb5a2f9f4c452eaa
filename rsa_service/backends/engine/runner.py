"""Forward passes of the model against cache rows: prefill chunks, one-token decode, whole-sequence scoring.

Token-level only: which sequence sits in which row, how prompts are chunked and when a sequence stops is the
batcher's business.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from rsa_service.backends.engine.cache import COLUMN_BLOCK, StateCache
from rsa_service.backends.engine.compiler import COMPILE_MIN_HIDDEN, compile_enabled
from rsa_service.backends.engine.config import ZayaDims
from rsa_service.backends.engine.decode import DecodeStep, batch_bucket
from rsa_service.backends.engine.model import ZayaForCausalLM
from rsa_service.backends.engine.prefill import prefill_ops


class ModelRunner:
    """Owns the model, its state cache, the compiled decode step and prefill pieces; counts skip routes taken per
    layer.

    `compile_decode` (decode and prefill alike) None follows RSA_ENGINE_COMPILE, else compiles where it pays; see
    `compiler`.
    """

    def __init__(self, model: ZayaForCausalLM, dims: ZayaDims, *, compile_decode: bool | None = None) -> None:
        self.model = model
        self.device = model.model.norm.weight.device
        self.cache = StateCache(dims, model.dtype, self.device)
        worthwhile = self.device.type == "cuda" or dims.hidden_size >= COMPILE_MIN_HIDDEN
        compile_step = compile_enabled(compile_decode, worthwhile=worthwhile)
        self.decoder = DecodeStep(model, self.cache, compile_step=compile_step)
        self.prefill_ops = prefill_ops(enabled=compile_step, device=self.device, mlp=self.decoder.expert_mlp)
        self._skips = torch.zeros(dims.num_hidden_layers, dtype=torch.long, device=self.device)

    @property
    def skip_counts(self) -> list[int]:
        """Skip routes taken by real tokens, per layer (counted on the device: decode never waits for it)."""
        return [int(n) for n in self._skips.tolist()]

    def reserve(self, rows: int, max_len: int) -> None:
        """Make room for rows [0, rows) of `max_len` tokens (rounded up to a decode batch)."""
        self.cache.reserve(batch_bucket(rows), max_len)

    def warm_up(self, batches: Iterable[int]) -> None:
        """Compile the decode step for `batches` (their buckets), and the prefill pieces, now, so no request waits
        for them."""
        self.decoder.warm_up(batches)
        with torch.inference_mode():
            self._forward([0], [[0, 0]], [0])  # one graph per piece serves any rows and tokens (`prefill` module)

    def _count(self, skips: Tensor | list[int]) -> None:
        self._skips += torch.as_tensor(skips, device=self.device)

    @torch.inference_mode()
    def prefill(self, rows: Sequence[int], pieces: Sequence[Sequence[int]], starts: Sequence[int]) -> Tensor:
        """Run `pieces[b]`, the prompt tokens of row `rows[b]` after its first `starts[b]`, in one pass.

        A piece starting at 0 begins a fresh sequence. Returns the final hidden state at each piece's last token,
        [B, H]; `logits` turns the ones that end a prompt into next-token logits.
        """
        hidden, skips = self._forward(rows, pieces, starts)
        self._count(skips)
        return hidden

    def _forward(
        self, rows: Sequence[int], pieces: Sequence[Sequence[int]], starts: Sequence[int]
    ) -> tuple[Tensor, list[int]]:
        """`prefill` without counting its skip routes: → hidden [B, H], skip routes per layer."""
        fresh = [row for row, start in zip(rows, starts, strict=True) if start == 0]
        if fresh:
            self.cache.reset(fresh)
        lengths = [len(p) for p in pieces]
        ctx = self.cache.context(rows, starts, lengths)
        hidden, skips = self.model(self._pad(pieces), ctx, self.cache.layers, self.prefill_ops)
        return hidden[torch.arange(len(rows), device=self.device), ctx.last], skips

    def logits(self, hidden: Tensor) -> Tensor:
        """hidden [B, H] → fp32 logits [B, V]."""
        with torch.inference_mode():
            return self.model.logits(hidden, self.prefill_ops.ops)

    def decode(self, rows: Sequence[int], tokens: Sequence[int], positions: Sequence[int]) -> Tensor:
        """Feed one token to each of `rows` at `positions`; return next-token logits [len(rows), V] fp32.

        The step runs over the leading rows at a fixed batch size; other rows ride along inactive.
        """
        batch = batch_bucket(max(rows) + 1)
        # Every row of the bucket decoding, in order (the steady state): nothing to spread or pick, ~5 ops fewer.
        index = None if list(rows) == list(range(batch)) else torch.tensor(list(rows), device=self.device)

        def spread(values: Sequence[int]) -> Tensor:
            given = torch.tensor(list(values), dtype=torch.long, device=self.device)
            if index is None:
                return given
            return torch.zeros(batch, dtype=torch.long, device=self.device).index_copy_(0, index, given)

        if index is None:
            active = torch.ones(batch, dtype=torch.bool, device=self.device)
        else:
            active = torch.zeros(batch, dtype=torch.bool, device=self.device).index_fill_(0, index, True)
        width = min(-(-(max(positions) + 1) // COLUMN_BLOCK) * COLUMN_BLOCK, self.cache.max_len)
        logits, skips = self.decoder(spread(tokens), spread(positions), active, width)
        self._count(skips)
        return logits if index is None else logits[index]

    @torch.inference_mode()
    def score(self, row: int, tokens: Sequence[int]) -> Tensor:
        """Logits after every token of one fresh sequence, in one pass: [T, V] fp32."""
        self.reserve(row + 1, len(tokens))
        self.cache.reset([row])
        ctx = self.cache.context([row], [0], [len(tokens)])
        hidden, skips = self.model(self._pad([tokens]), ctx, self.cache.layers, self.prefill_ops)
        self._count(skips)
        return self.model.logits(hidden[0], self.prefill_ops.ops)

    def _pad(self, pieces: Sequence[Sequence[int]]) -> Tensor:
        width = max(len(p) for p in pieces)
        rows = [list(p) + [0] * (width - len(p)) for p in pieces]
        return torch.tensor(rows, dtype=torch.long, device=self.device)  # [B, T]
