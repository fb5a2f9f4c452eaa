"""Build tiny random ZAYA1 checkpoints at test time, in the published layout, with a real tokenizer.

The weights come from the reference implementation itself (transformers' `ZayaConfig` / `ZayaForCausalLM`,
`save_pretrained`), with the parameters that initialise to neutral values (key temperature 0, balancing biases,
residual scales 1/0, norm weights 1) set to trained-looking values so no code path is silently a no-op. The
tokenizer is a byte-level BPE trained here with the `tokenizers` library, saved with a ChatML-like chat template
that opens `<think>`.

Usage (any test): `directory = build_checkpoint(tmp_path / "ckpt", TinySpec(layers=3))`, then
`EngineBackend.from_spec(str(directory), BackendOptions(dtype="float32"))`. Needs torch and transformers.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}{% endif %}"
)
SPECIAL_TOKENS = ("<pad>", "<bos>", "<|im_end|>", "<|im_start|>")
THINK_TOKENS = ("<think>", "</think>")
_CORPUS = (
    "The sum of two odd numbers is even. Let me think step by step about the answer.\n",
    "We check each case: if n is prime then n + 1 is even, so the answer is 42.\n",
    "First compute 3 * 7 = 21, then add 21 to get 42. Therefore the final answer is \\boxed{42}.\n",
    "Solve for x: 2x + 3 = 11, so 2x = 8 and x = 4. Wait, verify: 2*4 + 3 = 11. Correct.\n",
    "Aggregate the candidate solutions, compare their reasoning and keep the consistent one.\n",
)


@dataclass(frozen=True)
class TinySpec:
    """Shape of a tiny checkpoint. `vocab` is the BPE training target; the model's vocab is the tokenizer's."""

    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 16
    hidden: int = 64
    experts: int = 4
    intermediate: int = 32
    router_hidden: int = 16
    vocab: int = 320
    cca_time0: int = 2
    cca_time1: int = 2
    tie_embeddings: bool = True
    seed: int = 0


def build_tokenizer(directory: Path, vocab: int) -> dict[str, int]:
    """Train a byte-level BPE, save tokenizer.json + tokenizer_config.json; return the special token ids."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(_CORPUS) * 4, trainer=trainer)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {
        "bos_token": "<bos>",
        "eos_token": "<|im_end|>",
        "pad_token": "<pad>",
        "chat_template": CHAT_TEMPLATE,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    ids = {name: tokenizer.token_to_id(name) for name in (*SPECIAL_TOKENS, *THINK_TOKENS)}
    return {**ids, "vocab_size": tokenizer.get_vocab_size()}


def build_checkpoint(
    directory: Path,
    spec: TinySpec | None = None,
    *,
    max_shard_size: str | None = None,
    tokenizer: bool = True,
) -> Path:
    """Write a random fp32 ZAYA1 checkpoint (+ tokenizer) to `directory` and return it.

    `max_shard_size` (e.g. "200KB") writes sharded files with model.safetensors.index.json.
    """
    import torch
    from transformers import ZayaConfig, ZayaForCausalLM

    spec = spec or TinySpec()
    if tokenizer:
        ids = build_tokenizer(directory, spec.vocab)
    else:
        ids = {"vocab_size": spec.vocab, "<pad>": 0, "<bos>": 1, "<|im_end|>": 2}
    config = ZayaConfig(
        vocab_size=ids["vocab_size"],
        hidden_size=spec.hidden,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        head_dim=spec.head_dim,
        moe_intermediate_size=spec.intermediate,
        num_experts=spec.experts,
        router_hidden_size=spec.router_hidden,
        cca_time0=spec.cca_time0,
        cca_time1=spec.cca_time1,
        tie_word_embeddings=spec.tie_embeddings,
        max_position_embeddings=4096,
        initializer_range=0.5,
        pad_token_id=ids["<pad>"],
        bos_token_id=ids["<bos>"],
        eos_token_id=ids["<|im_end|>"],
    )
    torch.manual_seed(spec.seed)
    model = ZayaForCausalLM(config)
    _look_trained(model, torch.Generator().manual_seed(spec.seed + 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kwargs: dict[str, Any] = {"max_shard_size": max_shard_size} if max_shard_size else {}
        model.save_pretrained(directory, **kwargs)
    return directory


def _look_trained(model: Any, gen: Any) -> None:
    """Move parameters that initialise to neutral values away from them, so each one matters."""
    import torch

    def noise(t: torch.Tensor, std: float) -> torch.Tensor:
        return torch.randn(t.shape, generator=gen) * std

    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith("qk_norm.temp"):
                tensor.copy_(0.6 + torch.rand(tensor.shape, generator=gen))
            elif name.endswith("balancing_biases"):
                tensor.copy_(noise(tensor, 0.05))
            elif name.endswith(("_scale", "norm.weight", "layernorm.weight")):
                tensor.copy_(1.0 + noise(tensor, 0.1))
            elif name.endswith(("_bias", "conv_qk_depthwise.bias", "conv_qk_grouped.bias")):
                tensor.copy_(noise(tensor, 0.05))
            elif name.endswith("router_mlp.out_proj.weight"):
                tensor.copy_(noise(tensor, 1.0))


def reference_model(directory: Path) -> Any:
    """The transformers reference model of a checkpoint, in fp32, for comparisons.

    transformers 5.23 overwrites the stored skip-route balancing bias with -1.0 after loading (its weight
    initialiser assigns `balancing_biases[-1]` directly); the stored biases are put back so the reference
    computes with the checkpoint's values, as the engine does.
    """
    import torch
    from safetensors import safe_open
    from transformers import ZayaForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ZayaForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    buffers = dict(model.named_buffers())
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if key.endswith("balancing_biases"):
                    buffers[key].copy_(f.get_tensor(key))
    return model
