"""Train the tiny ZAYA1 that ships in rsa_service/tinymodel/checkpoint/.

Phase 1 teaches plain solving of the task in scripts/tiny_task.py. Phase 2 samples the phase-1 model's
*own* candidates (round-0 style: temperature 1.0, budget β), cuts their τ-token tails exactly as the service
does, and continues on a mix of aggregating (the service's rendered aggregation prompt over own tails, target a
correct solution) and some solving. Both phases share one cosine schedule that is longer than the run: stopping
early keeps the solver fallible (a fully trained one solves this task every time, leaving nothing to aggregate),
and fixing the schedule length keeps phase 1 on the exact trajectory whatever phase 2 does. Deterministic in
--seed on a fixed thread count.

    .venv/bin/python scripts/train_tiny_zaya.py --out rsa_service/tinymodel/checkpoint
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from tiny_formats import (
    BOS,
    IM_END,
    PAD,
    aggregation_message,
    build_tokenizer,
    completion,
    final_answer,
    render_chat,
    save_tokenizer,
    tail,
)
from tiny_rsa import generate
from tiny_task import Problem, answer_text, check, load_heldout, problems, reasoning_text
from tokenizers import Tokenizer
from transformers import ZayaConfig, ZayaForCausalLM

from rsa_service.core.plan import choose_subset
from rsa_service.tinymodel import HELDOUT_PATH

Example = tuple[list[int], int]  # token ids, number of prompt tokens (not trained on)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--solve-steps", type=int, default=450, help="phase 1 steps (solving only)")
    parser.add_argument("--mix-steps", type=int, default=150, help="phase 2 steps (solving + aggregating)")
    parser.add_argument("--solve-batch", type=int, default=16)
    parser.add_argument("--aggregate-batch", type=int, default=8)
    parser.add_argument("--aggregate-share", type=float, default=0.8, help="share of phase-2 batches")
    parser.add_argument("--candidate-problems", type=int, default=500, help="problems sampled in phase 2")
    parser.add_argument("--candidates", type=int, default=8, help="own samples per phase-2 problem")
    parser.add_argument("--subsets", type=int, default=2, help="aggregation examples per phase-2 problem")
    parser.add_argument("--subset-size", type=int, default=4, help="K of most aggregation examples")
    parser.add_argument("--refine-share", type=float, default=0.15, help="share of K=1 (refine) examples")
    parser.add_argument("--tail-tokens", type=int, default=64)
    parser.add_argument("--trace-tokens", type=int, default=192)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument(
        "--schedule-steps", type=int, default=900, help="cosine length; training stops early, at solve + mix steps"
    )
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--key-temperature", type=float, default=2.0, help="initial CCA key scale (HF inits 0)")
    return parser.parse_args()


def model_config(tokenizer: Tokenizer, args: argparse.Namespace) -> ZayaConfig:
    """ZAYA1's architecture at toy width: CCA attention (4 query / 2 KV heads), top-1 MoE with a skip route."""
    return ZayaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=args.hidden // 4,
        num_experts=args.experts,
        moe_intermediate_size=2 * args.hidden,
        router_hidden_size=64,
        max_position_embeddings=1024,
        rope_parameters={"hybrid": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}},
        pad_token_id=tokenizer.token_to_id(PAD),
        bos_token_id=tokenizer.token_to_id(BOS),
        eos_token_id=tokenizer.token_to_id(IM_END),
        tie_word_embeddings=True,
    )


def target(problem: Problem) -> str:
    return completion(reasoning_text(problem), answer_text(problem.answer))


def tokenizer_corpus(seed: int, tail_tokens: int) -> Iterator[str]:
    """Solving and aggregation conversations over canonical traces, so template words become single tokens."""
    for problem in problems(seed, 300):
        steps = reasoning_text(problem).splitlines()
        candidate = "\n".join(steps[-(tail_tokens // 12) :])
        yield render_chat(problem.prompt) + target(problem)
        yield render_chat(aggregation_message(problem.prompt, [candidate] * 4)) + target(problem)
        yield render_chat(aggregation_message(problem.prompt, [candidate])) + target(problem)


def encode(tokenizer: Tokenizer, prompt: str, answer: str) -> Example:
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False).ids
    return prompt_ids + tokenizer.encode(answer, add_special_tokens=False).ids, len(prompt_ids)


def collate(batch: Sequence[Example], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and labels; only completion tokens are trained on (HF shifts labels itself)."""
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for row, (tokens, prompt_len) in enumerate(batch):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        labels[row, prompt_len : len(tokens)] = torch.tensor(tokens[prompt_len:])
    return ids, labels


class Trainer:
    """A plain AdamW loop with linear warmup and one cosine decay over both phases."""

    def __init__(self, model: ZayaForCausalLM, args: argparse.Namespace, pad: int) -> None:
        self.model, self.args, self.pad, self.step = model, args, pad, 0
        self.total = args.schedule_steps
        decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
        rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}],
            lr=args.lr,
            betas=(0.9, 0.98),
        )
        self.losses: list[float] = []
        self.started = time.monotonic()

    def lr(self) -> float:
        if self.step < self.args.warmup:
            return self.args.lr * (self.step + 1) / self.args.warmup
        progress = (self.step - self.args.warmup) / max(1, self.total - self.args.warmup)
        return self.args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))

    def train_on(self, batch: Sequence[Example]) -> None:
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr()
        ids, labels = collate(batch, self.pad)
        loss = self.model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.losses.append(loss.item())
        self.step += 1
        if self.step % 50 == 0:
            recent = self.losses[-50:]
            print(
                f"step {self.step}/{self.total} lr {self.lr():.2e} loss {sum(recent) / len(recent):.4f} "
                f"{time.monotonic() - self.started:.0f}s",
                flush=True,
            )


def own_candidates(
    model: ZayaForCausalLM, tokenizer: Tokenizer, pool: Sequence[Problem], args: argparse.Namespace
) -> list[list[str]]:
    """Round-0 samples of the current model (temperature 1.0, budget β), reduced to their τ-token tails."""
    prompts = [render_chat(p.prompt) for p in pool for _ in range(args.candidates)]
    model.eval()
    flat = generate(model, tokenizer, prompts, max_new_tokens=args.trace_tokens, temperature=1.0, seed=args.seed)
    right = [
        check(final_answer(g), p) for g, p in zip(flat, [p for p in pool for _ in range(args.candidates)], strict=True)
    ]
    print(f"own candidates: {len(flat)} samples, accuracy {sum(right) / len(right):.3f}", flush=True)
    tails = [tail(tokenizer, g, args.tail_tokens) for g in flat]
    return [tails[i * args.candidates : (i + 1) * args.candidates] for i in range(len(pool))]


def aggregation_examples(
    tokenizer: Tokenizer, pool: Sequence[Problem], tails: Sequence[Sequence[str]], args: argparse.Namespace
) -> list[Example]:
    """Service-rendered aggregation prompts over own tails (subsets as the service draws them), correct targets."""
    rng = random.Random(args.seed + 1)
    examples = []
    for index, (problem, own) in enumerate(zip(pool, tails, strict=True)):
        for subset in range(args.subsets):
            k = 1 if rng.random() < args.refine_share else args.subset_size
            chosen = choose_subset(args.seed, index, subset, range(len(own)), k)
            prompt = render_chat(aggregation_message(problem.prompt, [own[c] for c in chosen]))
            examples.append(encode(tokenizer, prompt, target(problem)))
    rng.shuffle(examples)
    return examples


def solve_batches(tokenizer: Tokenizer, seed: int, size: int, exclude: frozenset[str]) -> Iterator[list[Example]]:
    """Endless fresh solving examples (held-out prompts excluded)."""
    stream = problems(seed, 10**9, exclude)
    while True:
        yield [encode(tokenizer, render_chat(p.prompt), target(p)) for p in (next(stream) for _ in range(size))]


@torch.no_grad()
def quick_accuracy(model: ZayaForCausalLM, tokenizer: Tokenizer, rows: Sequence[dict[str, str]]) -> str:
    """Held-out single-try accuracy at temperature 1.0 and greedy, for the log."""
    model.eval()
    prompts = [render_chat(r["prompt"]) for r in rows]
    report = []
    for temperature in (1.0, 0.0):
        outs = generate(model, tokenizer, prompts, max_new_tokens=192, temperature=temperature, seed=12345)
        acc = sum(check(final_answer(o), r["answer"]) for o, r in zip(outs, rows, strict=True)) / len(rows)
        report.append(f"T={temperature}: {acc:.3f}")
    return ", ".join(report)


def main() -> None:
    args = parse_args()
    started = time.monotonic()
    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    heldout = load_heldout(HELDOUT_PATH)
    exclude = frozenset(r["prompt"] for r in heldout)

    tokenizer = build_tokenizer(tokenizer_corpus(args.seed + 2, args.tail_tokens))
    model = ZayaForCausalLM(model_config(tokenizer, args))
    with torch.no_grad():
        # The reference initialises the learned key temperature to 0, i.e. uniform attention, from which a tiny
        # model trained for minutes never learns to copy operands. Start it sharp instead; it stays trainable.
        for layer in model.model.layers:
            layer.self_attn.qk_norm.temp.fill_(args.key_temperature)
    print(f"vocab {tokenizer.get_vocab_size()}, parameters {sum(p.numel() for p in model.parameters()):,}")
    trainer = Trainer(model, args, tokenizer.token_to_id(PAD))
    solving = solve_batches(tokenizer, args.seed + 3, args.solve_batch, exclude)

    for _ in range(args.solve_steps):
        trainer.train_on(next(solving))
    print(f"phase 1 done at {time.monotonic() - started:.0f}s", flush=True)

    if args.mix_steps:
        pool = list(problems(args.seed + 4, args.candidate_problems, exclude))
        tails = own_candidates(model, tokenizer, pool, args)
        aggregating = aggregation_examples(tokenizer, pool, tails, args)
        print(f"{len(aggregating)} aggregation examples, sampled by {time.monotonic() - started:.0f}s", flush=True)
    rng = random.Random(args.seed + 5)
    cursor = 0
    for _ in range(args.mix_steps):
        if rng.random() < args.aggregate_share:
            batch = [aggregating[(cursor + i) % len(aggregating)] for i in range(args.aggregate_batch)]
            cursor += args.aggregate_batch
            trainer.train_on(batch)
        else:
            trainer.train_on(next(solving))
    elapsed = time.monotonic() - started
    print(f"phase 2 done at {elapsed:.0f}s; {quick_accuracy(model, tokenizer, heldout[-200:])}")

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    save_tokenizer(tokenizer, args.out)
    meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    meta["train_seconds"] = round(elapsed)
    (args.out / "training_args.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"saved {args.out} after {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
