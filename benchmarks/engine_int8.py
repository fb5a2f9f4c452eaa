"""Weight-only int8 against bf16 on engine.py's mid-size random checkpoint, side by side in one process.

Loads the checkpoint twice, bf16 and bf16 compute with int8 weights (`quantize="int8"`), and times the two in
alternation (each figure the best of several runs): decode tokens/s at each batch, each beside its own bandwidth
bound (`decode_step_bytes`, int8 matrices at one byte an element plus a scale a row), the bytes a step reads, and
prefill of 2,048 tokens. Then the agreement of int8 with bf16 on held-out random prompts (seeded apart from the
timed ones; `bench.agreement`): the most likely next token at every prompt position, and how much of each greedy
continuation int8 reproduces before the two part (this random model's continuations soon repeat one token).

    .venv/bin/python benchmarks/engine_int8.py [--threads 1] [--batches 1 16] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import torch
from engine import DECODE_NEW, DECODE_PROMPT, PREFILL_PROMPT, REPEATS, measured_bandwidth, setup
from engine_8b import describe

from rsa_service.backends.engine.bench import (
    agreement,
    decode_step_bytes,
    greedy_continuations,
    random_prompts,
    run_bench,
    top1_tokens,
)
from rsa_service.backends.engine.config import ZayaConfig
from rsa_service.backends.engine.loader import load_model
from rsa_service.backends.engine.runner import ModelRunner

MODES = ("none", "int8")
HELD_OUT = {"count": 16, "length": 64, "new_tokens": 64, "seed": 1}  # run_bench's prompts use seed 0


def best_of(runners: dict[str, ModelRunner], key: str, **bench: int) -> dict[str, float]:
    """Each runner's best `key` over REPEATS runs, the runners alternating (the machine is shared)."""
    best = dict.fromkeys(runners, 0.0)
    for _ in range(REPEATS):
        for mode, runner in runners.items():
            best[mode] = max(best[mode], run_bench(runner, **bench).as_json()[key])
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args, directory = setup(parser)
    dims = ZayaConfig.from_checkpoint(directory)
    runners = {}
    for mode in MODES:
        config, model = load_model(directory, dtype=torch.bfloat16, quantize=mode)
        runners[mode] = ModelRunner(model, config, compile_decode=True)
        runners[mode].warm_up(args.batches)
    bandwidth = measured_bandwidth(args.threads)
    figures: dict[str, Any] = {"bandwidth_bytes_per_s": bandwidth, "decode": [], "prefill": {}}
    context = DECODE_PROMPT + DECODE_NEW // 2
    for batch in args.batches:
        timed = {"batch": batch, "prompt_tokens": DECODE_PROMPT, "new_tokens": DECODE_NEW}
        decode = best_of(runners, "decode_tokens_per_s", **timed)
        step_bytes = {m: decode_step_bytes(dims, batch, context, torch.bfloat16, int8=m == "int8") for m in MODES}
        shares = {m: decode[m] / (bandwidth / step_bytes[m] * batch) for m in MODES}
        figures["decode"].append({"batch": batch, "tokens_per_s": decode, "step_bytes": step_bytes, "share": shares})
        print(
            f"decode batch {batch:2}: bf16 {decode['none']:7.1f} tok/s ({shares['none']:4.0%} of its bound, "
            f"{step_bytes['none'] / 1e6:.1f} MB a step), int8 {decode['int8']:7.1f} tok/s ({shares['int8']:4.0%}, "
            f"{step_bytes['int8'] / 1e6:.1f} MB), int8/bf16 {decode['int8'] / decode['none']:4.2f}x, "
            f"load {os.getloadavg()[0]:.2f}",
            flush=True,
        )
    prefill = best_of(runners, "prefill_tokens_per_s", batch=1, prompt_tokens=PREFILL_PROMPT, new_tokens=2)
    figures["prefill"] = prefill
    print(
        f"prefill {PREFILL_PROMPT}: bf16 {prefill['none']:7.0f} tok/s, int8 {prefill['int8']:7.0f} tok/s, "
        f"int8/bf16 {prefill['int8'] / prefill['none']:4.2f}x",
        flush=True,
    )
    prompts = random_prompts(dims.vocab_size, HELD_OUT["count"], HELD_OUT["length"], HELD_OUT["seed"])
    bf16 = runners["none"]
    greedy = greedy_continuations(bf16, prompts, HELD_OUT["new_tokens"])
    found = agreement(runners["int8"], prompts, top1_tokens(bf16, prompts), greedy)
    figures["agreement"] = found.as_json()
    print(describe(found, HELD_OUT["new_tokens"]))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
