"""Chat template rendering, prompt encoding and incremental detokenisation with stop strings."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from checkpoints import build_tokenizer

from rsa_service.backends.engine.config import ZayaConfig
from rsa_service.backends.engine.tokenizer import ChatTemplateError, ChatTokenizer, thinking_opened

pytestmark = pytest.mark.engine
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint: Path) -> ChatTokenizer:
    return ChatTokenizer.from_checkpoint(tiny_checkpoint, ZayaConfig.from_checkpoint(tiny_checkpoint))


def test_template_renders_with_and_without_thinking(tokenizer: ChatTokenizer) -> None:
    thinking = tokenizer.render(MESSAGES)
    assert thinking.startswith("<bos><|im_start|>system\nBe brief.<|im_end|>\n")
    assert thinking.endswith("<|im_start|>assistant\n<think>\n") and thinking_opened(thinking)
    plain = tokenizer.render(MESSAGES, enable_thinking=False)
    assert plain.endswith("<think>\n\n</think>\n\n") and not thinking_opened(plain)


def test_rendered_prompt_is_encoded_without_added_special_tokens(tokenizer: ChatTokenizer) -> None:
    text = tokenizer.render(MESSAGES)
    ids = tokenizer.encode(text)
    assert ids.count(tokenizer.encode("<bos>")[0]) == 1
    assert tokenizer.decode(ids) == text
    assert tokenizer.encode_plain("2 + 2") == tokenizer.encode("<bos>2 + 2") == tokenizer.encode_plain("<bos>2 + 2")


def test_stream_matches_full_decode_across_multibyte_characters(tokenizer: ChatTokenizer) -> None:
    text = "Résumé: 3 × 7 = 21 → naïve ✓ 🙂 done."
    stream = tokenizer.stream()
    for token in tokenizer.encode(text):
        assert not stream.push(token)
        assert "\ufffd" not in stream.text
    stream.flush()
    assert stream.text == text


def test_stop_string_spanning_tokens_cuts_the_text(tokenizer: ChatTokenizer) -> None:
    stream = tokenizer.stream(stop=("answer is",))
    pushed = [stream.push(t) for t in tokenizer.encode("so the answer is 42 indeed")]
    assert pushed[-1] and pushed.index(True) < len(pushed) - 1
    assert stream.text == "so the "


def test_template_from_jinja_file_and_missing_template(tmp_path: Path) -> None:
    build_tokenizer(tmp_path, 300)
    settings = tmp_path / "tokenizer_config.json"
    settings.write_text('{"bos_token": {"content": "<bos>"}}')
    config = ZayaConfig.model_validate(
        {"vocab_size": 300, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1,
         "num_key_value_heads": 1, "head_dim": 8, "moe_intermediate_size": 8, "num_experts": 2,
         "router_hidden_size": 4}
    )  # fmt: skip
    with pytest.raises(ChatTemplateError, match="no chat template"):
        ChatTokenizer.from_checkpoint(tmp_path, config).render(MESSAGES)
    (tmp_path / "chat_template.jinja").write_text("{{ bos_token }}{{ messages[-1]['content'] }}")
    assert ChatTokenizer.from_checkpoint(tmp_path, config).render(MESSAGES) == "<bos>What is 2 + 2?"
