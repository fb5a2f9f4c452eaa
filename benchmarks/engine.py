"""Our ZAYA1 engine against transformers' ZayaForCausalLM.generate, same weights, prompts and device, in one run.

Builds (once, into benchmarks/.cache/) a mid-size random ZAYA1 checkpoint: hidden 512, 8 layers, 8 query / 2 KV
heads of 64, 16 experts of intermediate 512, vocab 8192. Measures the machine's memory bandwidth in the same run
(sum of a 512 MiB tensor, best of several), and prints each decode figure beside the bandwidth bound: the bytes a
decode step must read (weights it touches plus the KV cache it attends over) divided by that bandwidth. The bound
counts min(batch, 16) experts per layer; a second, tighter one counts the experts uniformly random
routes would hit (~10.3 of 16 at batch 16), which is what a step that reads each expert hit once must read. Our decode
step is compiled (hidden 512 is below the engine's default compile threshold, so this is asked for explicitly).
Every figure, ours and the reference's alike, is the best of three timings after one untimed warm-up run.

    .venv/bin/python benchmarks/engine.py [--threads 1] [--dtypes float32 bfloat16] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from rsa_service.backends.engine.bench import decode_step_bytes, read_bandwidth_bytes_per_s, run_bench
from rsa_service.backends.engine.config import ZayaConfig
from rsa_service.backends.engine.loader import load_model
from rsa_service.backends.engine.runner import ModelRunner

CACHE = Path(__file__).parent / ".cache"
CONFIG: dict[str, Any] = {
    "vocab_size": 8192,
    "hidden_size": 512,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "moe_intermediate_size": 512,
    "num_experts": 16,
    "router_hidden_size": 64,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": True,
}
DECODE_PROMPT, DECODE_NEW = 128, 64
PREFILL_PROMPT = 2048
REPEATS = 3  # each side's best of this many timings: the machine is shared, and slow runs say little about either


def build_checkpoint(directory: Path) -> Path:
    """Random reference weights (fp32), saved once with the reference's own save_pretrained."""
    if (directory / "config.json").is_file():
        return directory
    from transformers import ZayaConfig, ZayaForCausalLM

    torch.manual_seed(0)
    model = ZayaForCausalLM(ZayaConfig(**CONFIG))
    with torch.no_grad():  # spread the router's choices like a trained balancer would
        for name, buffer in model.named_buffers():
            if name.endswith("balancing_biases"):
                buffer.copy_(torch.randn(buffer.shape) * 0.01)
    model.save_pretrained(directory)
    return directory


def reference_timings(directory: Path, dtype: torch.dtype, batch: int, prompt: int, new: int) -> tuple[float, float]:
    """transformers generate: (prefill tokens/s, decode tokens/s aggregate), greedy, no EOS."""
    from transformers import ZayaForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ZayaForCausalLM.from_pretrained(directory, dtype=dtype).eval()
    ids = torch.randint(3, CONFIG["vocab_size"], (batch, prompt), generator=torch.Generator().manual_seed(1))

    def run(tokens: int) -> float:
        start = time.perf_counter()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=0)
        return time.perf_counter() - start

    run(2)  # warm-up
    first = min(run(1) for _ in range(REPEATS))
    if new <= 1:
        return batch * prompt / first, 0.0
    total = min(run(new) for _ in range(REPEATS))
    return batch * prompt / first, batch * (new - 1) / max(total - first, 1e-9)


def ours(directory: Path, dtype: torch.dtype, batch: int, prompt: int, new: int) -> dict[str, Any]:
    """Our figures, each the best of REPEATS runs after one untimed run, as the reference gets (that run compiles,
    or loads the compiled code, and grows the cache)."""
    config, model = load_model(directory, dtype=dtype)
    runner = ModelRunner(model, config, compile_decode=True)
    run_bench(runner, batch=batch, prompt_tokens=prompt, new_tokens=new)
    runs = [run_bench(runner, batch=batch, prompt_tokens=prompt, new_tokens=new).as_json() for _ in range(REPEATS)]
    best = dict(runs[-1])
    for key in ("prefill_tokens_per_s", "decode_tokens_per_s"):
        best[key] = max(run[key] for run in runs)
    return best


def setup(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, Path]:
    """The options every mid-size benchmark takes (--threads, --batches, --json), parsed and applied: → them and the
    checkpoint (built on first use)."""
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    return args, build_checkpoint(CACHE / "engine-mid")


def measured_bandwidth(threads: int) -> float:
    """This machine's read bandwidth now (bytes/s), printed with the thread count and load average."""
    bandwidth = read_bandwidth_bytes_per_s()
    print(
        f"threads {threads}, read bandwidth {bandwidth / 1e9:.1f} GB/s (sum of 512 MiB, best of 7), "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    return bandwidth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    args, directory = setup(parser)
    bandwidth = measured_bandwidth(args.threads)
    dims = ZayaConfig.from_checkpoint(directory)
    rows: list[dict[str, Any]] = []
    for name in args.dtypes:
        dtype = getattr(torch, name)
        for batch in args.batches:
            mine = ours(directory, dtype, batch, DECODE_PROMPT, DECODE_NEW)
            _, ref_decode = reference_timings(directory, dtype, batch, DECODE_PROMPT, DECODE_NEW)
            context = DECODE_PROMPT + DECODE_NEW // 2
            bound = bandwidth / decode_step_bytes(dims, batch, context, dtype) * batch  # tokens/s
            # Tighter: only the experts uniformly random routes would hit (~10.3 of 16 at batch 16).
            distinct = bandwidth / decode_step_bytes(dims, batch, context, dtype, distinct_experts=True) * batch
            row = {
                "dtype": name, "batch": batch, "figure": "decode tok/s", "ours": mine["decode_tokens_per_s"],
                "reference": ref_decode, "bound": bound, "bound_distinct_experts": distinct,
                "state_bytes_per_token": mine["state_bytes_per_token"],
            }  # fmt: skip
            rows.append(row)
            print(
                f"{name:8} decode  batch {batch:2}: ours {row['ours']:8.1f} tok/s ({row['ours'] / bound:4.0%} of "
                f"bound {bound:8.1f}; {row['ours'] / distinct:4.0%} of {distinct:8.1f} with distinct experts), "
                f"reference {ref_decode:8.1f} ({ref_decode / bound:4.0%}), "
                f"ratio {row['ours'] / ref_decode:4.2f}x, KV {mine['state_bytes_per_token']} B/token, "
                f"load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
        mine = ours(directory, dtype, 1, PREFILL_PROMPT, 2)
        ref_prefill, _ = reference_timings(directory, dtype, 1, PREFILL_PROMPT, 1)
        rows.append({"dtype": name, "batch": 1, "figure": f"prefill {PREFILL_PROMPT} tok/s",
                     "ours": mine["prefill_tokens_per_s"], "reference": ref_prefill})  # fmt: skip
        print(
            f"{name:8} prefill {PREFILL_PROMPT}: ours {mine['prefill_tokens_per_s']:8.0f} tok/s, reference "
            f"{ref_prefill:8.0f}, ratio {mine['prefill_tokens_per_s'] / ref_prefill:4.2f}x, "
            f"load {os.getloadavg()[0]:.2f}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps({"bandwidth_bytes_per_s": bandwidth, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
