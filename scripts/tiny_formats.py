"""The tiny model's text conventions: tokenizer, chat template, completion format, tails and aggregation prompts.

Training and evaluation both go through these functions, so the model learns exactly the strings the service
sends: prompts rendered by the published chat template, aggregation messages from the project's own
`prompts/*.jinja` (via `rsa_service.core.prompts`), and tails cut by `rsa_service.core.tails`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import jinja2
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from rsa_service.core.answers import extract_boxed
from rsa_service.core.prompts import PromptTemplates
from rsa_service.core.reasoning import THINK_CLOSE, THINK_OPEN, split_reasoning
from rsa_service.core.tails import fitting_tail, token_starts

PAD, BOS, IM_START, IM_END = "<|pad|>", "<|bos|>", "<|im_start|>", "<|im_end|>"
# Control tokens are "special" (dropped when decoding); the think tags are ordinary added tokens so decoded text
# keeps them, which is how the service separates reasoning from the answer.
SPECIAL_TOKENS = (PAD, BOS, IM_START, IM_END)
THINK_TOKENS = (THINK_OPEN, THINK_CLOSE)
VOCAB_SIZE = 512

# ChatML-like; with enable_thinking (default true) the generation prompt opens <think> for the model, as ZAYA1's
# does, otherwise it closes an empty think block so the model answers directly.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and not enable_thinking %}{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{%- else %}{{ '<think>\\n' }}{%- endif %}"
    "{%- endif %}"
)
_CHAT = jinja2.Environment(autoescape=False).from_string(CHAT_TEMPLATE)


def build_tokenizer(corpus: Iterable[str]) -> Tokenizer:
    """A byte-level BPE of VOCAB_SIZE tokens trained on the task's own text.

    Digits stay single tokens (arithmetic is learnt per digit); the fixed words of the aggregation template merge
    into whole-word tokens, which keeps a K=4 aggregation prompt at a few hundred tokens. Byte-level, so any text a
    user sends still encodes. Deterministic in its corpus.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(THINK_TOKENS),
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    return tokenizer


def tokenizer_config() -> dict[str, object]:
    """tokenizer_config.json: lets transformers' AutoTokenizer and our engine render the same chat prompts."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": IM_END,
        "pad_token": PAD,
        "add_bos_token": False,
        "add_eos_token": False,
        "model_max_length": 1024,
        "chat_template": CHAT_TEMPLATE,
    }


def save_tokenizer(tokenizer: Tokenizer, directory: Path) -> None:
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(), indent=2) + "\n")


def render_chat(user_message: str, *, enable_thinking: bool = True) -> str:
    """The generation prompt for one user turn, exactly as the chat template renders it."""
    return _CHAT.render(
        messages=[{"role": "user", "content": user_message}],
        add_generation_prompt=True,
        enable_thinking=enable_thinking,
        bos_token=BOS,
    )


def completion(reasoning: str, answer: str) -> str:
    """What the model generates after the prompt's opened <think>, up to and including end of turn."""
    return f"{reasoning}\n{THINK_CLOSE}\n\n{answer}{IM_END}"


def tail(tokenizer: Tokenizer, generated: str, tail_tokens: int) -> str:
    """The Markovian state of one generation: the last τ tokens of its reasoning, cut as the service cuts it."""
    reasoning, answer = split_reasoning(generated, thinking_opened=True)
    source = reasoning if reasoning.strip() else answer
    return fitting_tail(source, functools.partial(token_starts, tokenizer), tail_tokens).text


def final_answer(generated: str) -> str | None:
    """The last \\boxed{} of the answer part (text after </think>)."""
    _, answer = split_reasoning(generated, thinking_opened=True)
    return extract_boxed(answer)


_TEMPLATES = PromptTemplates.load()


def aggregation_message(problem: str, candidates: Sequence[str]) -> str:
    """The user message of an aggregation step: aggregate.jinja for K > 1, refine.jinja for K = 1."""
    return _TEMPLATES.render(problem, candidates)
