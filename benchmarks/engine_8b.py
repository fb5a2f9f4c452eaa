"""The real ZAYA1-8B shape: load time, peak RSS, decode tokens/s at batch 1 and 8 vs the bound.

Writes (once) a checkpoint with the published ZAYA1-8B config and random bf16 weights into
benchmarks/.cache/zaya1-8b/ (about 17 GB, gitignored): safetensors shards of at most 5 GB with an index, written
one shard at a time, so the whole model never sits in memory during generation. Exits with a clear message when
the disk or memory is too small.

With `--quantize int8` the weights a decode step streams are stored as int8 (per-row scales): the same figures, each
against the int8 bound, and the agreement with bf16 on held-out prompts (`bench.agreement`: the most likely next
token at every prompt position, and greedy continuations). A bf16 run saves its own choices on those prompts
(`zaya1-8b-greedy.json` in the cache) for the int8 run to compare against: the two models do not fit in memory
together.

    .venv/bin/python benchmarks/engine_8b.py [--threads 1] [--batches 1 8] [--new-tokens 16] [--quantize int8]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from rsa_service.backends.engine.bench import (
    Agreement,
    agreement,
    decode_step_bytes,
    greedy_continuations,
    random_prompts,
    read_bandwidth_bytes_per_s,
    run_bench,
    top1_tokens,
)
from rsa_service.backends.engine.config import ZayaConfig
from rsa_service.backends.engine.loader import INDEX_FILE, load_model
from rsa_service.backends.engine.model import ZayaForCausalLM
from rsa_service.backends.engine.runner import ModelRunner

DIRECTORY = Path(__file__).parent / ".cache" / "zaya1-8b"
REFERENCES = DIRECTORY.parent / "zaya1-8b-greedy.json"  # bf16's choices on the held-out prompts
HELD_OUT = {"count": 8, "length": 64, "new_tokens": 32, "seed": 1}  # seed 0 makes run_bench's prompts
SHARD_BYTES = 5 * 10**9
# config.json of the released Zyphra/ZAYA1-8B (the fields a loader reads).
CONFIG = {
    "architectures": ["ZayaForCausalLM"], "model_type": "zaya", "vocab_size": 262272, "hidden_size": 2048,
    "num_hidden_layers": 40, "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 128,
    "moe_intermediate_size": 2048, "num_experts": 16, "num_experts_per_tok": 1, "router_hidden_size": 256,
    "cca_time0": 2, "cca_time1": 2, "rms_norm_eps": 1e-5, "max_position_embeddings": 131072,
    "hidden_act": "silu", "tie_word_embeddings": True, "layer_types": ["hybrid"] * 40,
    "rope_parameters": {"hybrid": {"rope_type": "default", "rope_theta": 5000000.0, "partial_rotary_factor": 0.5}},
    "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 106, "torch_dtype": "bfloat16",
}  # fmt: skip


def _random(name: str, shape: torch.Size, gen: torch.Generator) -> torch.Tensor:
    """Trained-looking values: unit scales and norms, small biases, N(0, 0.02) matrices."""
    if name.endswith("balancing_biases"):
        return torch.randn(shape, generator=gen) * 0.01  # fp32, as stored
    if name.endswith(("_scale", "norm.weight", "layernorm.weight", "qk_norm.temp")):
        return torch.ones(shape, dtype=torch.bfloat16)
    if name.endswith("bias"):
        return torch.zeros(shape, dtype=torch.bfloat16)
    return (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)


def write_checkpoint(directory: Path) -> int:
    """Write the shards one by one (never more than one shard in memory); return the checkpoint's bytes."""
    config = ZayaConfig.model_validate(CONFIG)
    with torch.device("meta"):
        layout = ZayaForCausalLM(config, torch.bfloat16).state_dict()
    total = sum(t.numel() * (4 if k.endswith("balancing_biases") else 2) for k, t in layout.items())
    free_disk = shutil.disk_usage(directory.parent if directory.parent.exists() else Path.cwd()).free
    if free_disk < total * 1.1:
        sys.exit(f"engine_8b: needs {total / 1e9:.1f} GB of disk for the checkpoint, {free_disk / 1e9:.1f} GB free")
    directory.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    groups: list[list[str]] = [[]]
    size = 0
    for key, tensor in layout.items():
        nbytes = tensor.numel() * tensor.element_size()
        if size + nbytes > SHARD_BYTES and groups[-1]:
            groups.append([])
            size = 0
        groups[-1].append(key)
        size += nbytes
    weight_map = {}
    for i, keys in enumerate(groups, start=1):
        name = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        save_file({k: _random(k, layout[k].shape, gen) for k in keys}, str(directory / name), {"format": "pt"})
        weight_map.update(dict.fromkeys(keys, name))
        print(f"wrote {name} ({len(keys)} tensors)", flush=True)
    (directory / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (directory / "config.json").write_text(json.dumps(CONFIG, indent=2))  # last: marks the checkpoint complete
    return total


def describe(found: Agreement, new_tokens: int) -> str:
    return (
        f"agreement with bf16 on {found.prompts} held-out prompts: the same most likely next token at "
        f"{found.top1:.1%} of prompt positions; greedy continuations of {new_tokens} tokens equal for "
        f"{found.identical_prefix:.1%} of their length before they part, {found.identical} throughout"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--quantize", choices=["none", "int8"], default="none")
    args = parser.parse_args()
    int8 = args.quantize == "int8"
    torch.set_num_threads(args.threads)
    if not (DIRECTORY / "config.json").is_file():
        write_checkpoint(DIRECTORY)
    size = sum(p.stat().st_size for p in DIRECTORY.glob("*.safetensors"))
    available = int(Path("/proc/meminfo").read_text().split("MemAvailable:")[1].split()[0]) * 1024
    needed = size * (0.6 if int8 else 1.15)
    if available < needed:
        sys.exit(f"engine_8b: needs ~{needed / 1e9:.1f} GB of free memory, {available / 1e9:.1f} GB available")
    bandwidth = read_bandwidth_bytes_per_s()
    start = time.perf_counter()
    config, model = load_model(DIRECTORY, dtype=torch.bfloat16, quantize=args.quantize)
    load_s = time.perf_counter() - start
    runner = ModelRunner(model, config)
    weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    print(
        f"checkpoint {size / 1e9:.1f} GB, loaded in {load_s:.1f} s as {weights / 1e9:.1f} GB ({args.quantize} "
        f"quantization); threads {args.threads}, read bandwidth {bandwidth / 1e9:.1f} GB/s"
    )
    for batch in args.batches:
        result = run_bench(runner, batch=batch, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens)
        context = args.prompt_tokens + args.new_tokens // 2
        bound, distinct = (
            bandwidth / decode_step_bytes(config, batch, context, torch.bfloat16, distinct_experts=d, int8=int8) * batch
            for d in (False, True)
        )
        print(
            f"batch {batch}: decode {result.decode_tokens_per_s:.2f} tok/s ({result.decode_tokens_per_s / bound:.0%} "
            f"of the bound {bound:.2f}, {result.decode_tokens_per_s / distinct:.0%} of {distinct:.2f} with distinct "
            f"experts), prefill {result.prefill_tokens_per_s:.1f} tok/s, peak RSS "
            f"{result.peak_rss_bytes / 1e9:.1f} GB ({result.peak_rss_bytes / size:.2f}x checkpoint), "
            f"KV {result.state_bytes_per_token} B/token, load average {os.getloadavg()[0]:.2f}",
            flush=True,
        )
    prompts = random_prompts(config.vocab_size, HELD_OUT["count"], HELD_OUT["length"], HELD_OUT["seed"])
    if not int8:
        top1, greedy = top1_tokens(runner, prompts), greedy_continuations(runner, prompts, HELD_OUT["new_tokens"])
        REFERENCES.write_text(json.dumps({"held_out": HELD_OUT, "top1": top1, "greedy": greedy}))
        print(f"saved bf16's choices on {len(prompts)} held-out prompts to {REFERENCES}")
    elif REFERENCES.is_file() and json.loads(REFERENCES.read_text())["held_out"] == HELD_OUT:
        saved = json.loads(REFERENCES.read_text())
        print(describe(agreement(runner, prompts, saved["top1"], saved["greedy"]), HELD_OUT["new_tokens"]))
    else:
        print(f"no bf16 references ({REFERENCES}): run without --quantize first for the greedy agreement")


if __name__ == "__main__":
    main()
