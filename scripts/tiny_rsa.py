"""Batched sampling and the Markovian RSA loop on the Hugging Face reference model.

Used by training (to sample the model's own candidates for aggregation data) and by evaluation, so both run the
loop the service runs: round 0 samples the chat-rendered problem, each later round shows every slot K tails of the
previous round drawn by `rsa_service.core.plan.choose_subset` (ascending slot order), rendered with the project's
templates. Our in-process engine is not used here, so the numbers do not depend on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tiny_formats import PAD, aggregation_message, render_chat, tail
from tokenizers import Tokenizer
from transformers import ZayaForCausalLM

from rsa_service.core.plan import choose_subset


def load(checkpoint: Path) -> tuple[ZayaForCausalLM, Tokenizer]:
    model = ZayaForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    model.eval()
    return model, Tokenizer.from_file(str(checkpoint / "tokenizer.json"))


@torch.no_grad()
def generate(
    model: ZayaForCausalLM,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    batch_size: int = 256,
) -> list[str]:
    """Completions of rendered prompts (decoded, think tags kept). temperature 0 is greedy.

    Prompts are sorted by length and left-padded in batches; batch b is sampled under seed + b, so a run is
    reproducible for a given prompt list and batch size.
    """
    encoded = [tokenizer.encode(p, add_special_tokens=False).ids for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (len(encoded[i]), i))
    pad = tokenizer.token_to_id(PAD)
    assert pad is not None, f"the tokenizer has no {PAD} token"
    outputs: list[str] = [""] * len(prompts)
    for b, start in enumerate(range(0, len(order), batch_size)):
        chunk = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(chunk):
            ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
            mask[row, width - len(encoded[i]) :] = 1
        torch.manual_seed(seed + b)
        sampled = temperature > 0
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=sampled,
            temperature=temperature if sampled else None,
            top_k=0 if sampled else None,
            top_p=1.0 if sampled else None,
            pad_token_id=pad,
        )
        for row, i in enumerate(chunk):
            outputs[i] = tokenizer.decode(out[row, width:].tolist(), skip_special_tokens=True)
    return outputs


@dataclass(frozen=True)
class RSASettings:
    """N, K, T, β (trace budget), final-round budget, τ (tail), sampling temperature, seed."""

    population: int = 8
    subset: int = 4
    rounds: int = 2
    trace_tokens: int = 192
    final_tokens: int = 256
    tail_tokens: int = 64
    temperature: float = 1.0
    seed: int = 0


def run_rsa(
    model: ZayaForCausalLM, tokenizer: Tokenizer, problems: Sequence[str], settings: RSASettings
) -> list[list[list[str]]]:
    """All generations of Markovian RSA: [stage][problem][slot], stages 0..T (T aggregation rounds).

    Every problem is its own job whose subset draws use seed `settings.seed * 1_000_003 + problem index`.
    """
    n, stages = settings.population, []
    prompts = [render_chat(p) for p in problems for _ in range(n)]
    for stage in range(settings.rounds + 1):
        budget = settings.final_tokens if stage == settings.rounds else settings.trace_tokens
        flat = generate(
            model,
            tokenizer,
            prompts,
            max_new_tokens=budget,
            temperature=settings.temperature,
            seed=settings.seed * 7919 + stage * 104_729,
        )
        population = [flat[i * n : (i + 1) * n] for i in range(len(problems))]
        stages.append(population)
        tails = [[tail(tokenizer, g, settings.tail_tokens) for g in slots] for slots in population]
        prompts = [
            render_chat(
                aggregation_message(
                    problem,
                    [
                        tails[p][c]
                        for c in choose_subset(
                            settings.seed * 1_000_003 + p, stage + 1, slot, range(n), settings.subset
                        )
                    ],
                )
            )
            for p, problem in enumerate(problems)
            for slot in range(n)
        ]
    return stages
