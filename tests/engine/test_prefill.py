"""The compiled prefill pieces against eager, at every kind of shape a prefill step meets, without recompiling."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch
from conftest import COMPILE_TIMEOUT_S

from rsa_service.backends.engine.loader import load_model
from rsa_service.backends.engine.ops import expert_mlp
from rsa_service.backends.engine.prefill import prefill_ops
from rsa_service.backends.engine.runner import ModelRunner

pytestmark = pytest.mark.engine


@pytest.mark.timeout(COMPILE_TIMEOUT_S)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's own, raised while it compiles
def test_compiled_prefill_matches_eager_at_any_rows_and_tokens(checkpoints_dir: dict[str, Path]) -> None:
    """One graph per piece (the router's two) serves fresh and continued chunks of any rows and tokens, one token and
    one row included; the expert MLP stays eager so that only the pieces compile."""
    config, model = load_model(checkpoints_dir["tied"], dtype=torch.float32)
    eager, compiled = ModelRunner(model, config, compile_decode=False), ModelRunner(model, config, compile_decode=False)
    compiled.prefill_ops = ops = prefill_ops(enabled=True, device=torch.device("cpu"), mlp=expert_mlp)
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, config.vocab_size, (n,), generator=gen).tolist() for n in (40, 9, 1)]
    outputs = []
    for runner in (eager, compiled):
        runner.reserve(3, 64)
        runner.prefill([0], [[5, 6]], [0])  # the warm-up's call: compiles every piece
        with torch._dynamo.config.patch(error_on_recompile=runner is compiled):
            hidden = [
                runner.prefill([0, 1, 2], [p[:-4] or p for p in prompts], [0, 0, 0]),  # rows of 36, 5 and 1 tokens
                runner.prefill([0, 1], [prompts[0][-4:], prompts[1][-4:]], [36, 5]),  # continued chunks
                runner.prefill([1], [[7]], [9]),  # one token, one row
            ]
            outputs.append(torch.cat([runner.logits(torch.cat(hidden)), runner.score(2, prompts[0])]))
    assert ops.attention_inputs.compiled and ops.routed.compiled and ops.merge.compiled
    error = ((outputs[1] - outputs[0]).abs().max() / outputs[0].abs().max()).item()
    assert error < 1e-5, error
