"""The checkpoint's tokenizer and chat template, plus incremental detokenisation with stop strings.

The ZAYA1 tokenizer's post-processor adds BOS *and* EOS when asked for special tokens, so rendered prompts (which
carry their own BOS from the template) are always encoded without them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from rsa_service.backends.engine.config import ZayaConfig
from rsa_service.backends.engine.errors import CheckpointFileError, EngineError
from rsa_service.core.reasoning import THINK_CLOSE, THINK_OPEN
from rsa_service.core.tails import token_starts

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
TEMPLATE_FILE = "chat_template.jinja"
_REPLACEMENT_CHAR = "\ufffd"


class ChatTemplateError(EngineError):
    """The checkpoint has no chat template, or its template failed on these messages."""


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(f"chat template: {message}")


def _token_text(value: Any) -> str | None:
    """tokenizer_config.json writes special tokens as a string or as {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class ChatTokenizer:
    """tokenizer.json through `tokenizers`, the Jinja chat template through a sandboxed jinja2."""

    def __init__(self, tokenizer: Tokenizer, template: str | None, bos: str | None, eos: str | None) -> None:
        self._tokenizer = tokenizer
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals.update(raise_exception=_raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt))
        self._template = env.from_string(template) if template else None
        self.bos_token, self.eos_token = bos, eos
        self._bos_id = tokenizer.token_to_id(bos) if bos else None

    @classmethod
    def from_checkpoint(cls, directory: Path, config: ZayaConfig) -> ChatTokenizer:
        path = directory / TOKENIZER_FILE
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for missing and malformed files
            raise CheckpointFileError(f"{path}: cannot load tokenizer: {exc}") from exc
        settings = _read_json(directory / TOKENIZER_CONFIG_FILE)
        bos = _token_text(settings.get("bos_token")) or _id_text(tokenizer, config.bos_token_id)
        eos_ids = config.eos_token_ids
        eos = _token_text(settings.get("eos_token")) or _id_text(tokenizer, eos_ids[0] if eos_ids else None)
        return cls(tokenizer, _read_template(directory, settings), bos, eos)

    def render(self, messages: Sequence[dict[str, str]], *, enable_thinking: bool = True) -> str:
        """The prompt text for `messages`, ending with the assistant's turn opened."""
        if self._template is None:
            raise ChatTemplateError(
                f"checkpoint has no chat template ({TOKENIZER_CONFIG_FILE} 'chat_template' or {TEMPLATE_FILE})"
            )
        try:
            return self._template.render(
                messages=list(messages),
                add_generation_prompt=True,
                enable_thinking=enable_thinking,
                bos_token=self.bos_token or "",
                eos_token=self.eos_token or "",
            )
        except TemplateError as exc:
            raise ChatTemplateError(f"chat template failed: {exc}") from exc

    def encode(self, text: str) -> list[int]:
        """The text's ids. Through `encode_batch`, which releases the GIL (`encode` holds it for the whole call):
        prompts are tokenized on a worker thread, and the event loop must keep running meanwhile."""
        (encoding,) = self._tokenizer.encode_batch([text], add_special_tokens=False)
        return encoding.ids

    def encode_plain(self, text: str) -> list[int]:
        """A plain-text prompt: BOS (unless the text already starts with it) then the text, never EOS."""
        ids = self.encode(text)
        if self._bos_id is not None and not (self.bos_token and text.startswith(self.bos_token)):
            ids.insert(0, self._bos_id)
        return ids

    def token_starts(self, text: str) -> list[int]:
        """Each token's start offset in `text` (string indices), for token-exact tails."""
        return token_starts(self._tokenizer, text)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=False)

    def stream(self, stop: Sequence[str] = ()) -> TextStream:
        return TextStream(self, tuple(s for s in stop if s))


def thinking_opened(prompt: str) -> bool:
    """True when the rendered prompt ends inside an opened <think> block."""
    return prompt.rfind(THINK_OPEN) > prompt.rfind(THINK_CLOSE)


class TextStream:
    """Detokenises generated ids as they arrive and reports the first stop string.

    Decoding a window that starts a few tokens back keeps multi-token characters and tokenizer-specific spacing
    right without re-decoding the whole output each step; text ending in U+FFFD waits for its next byte.
    """

    def __init__(self, tokenizer: ChatTokenizer, stop: tuple[str, ...]) -> None:
        self._tokenizer, self._stop = tokenizer, stop
        self._longest_stop = max((len(s) for s in stop), default=0)
        self._ids: list[int] = []
        self._prefix = 0  # window start
        self._read = 0  # tokens already turned into text
        self.text = ""
        self.stopped = False

    def push(self, token_id: int) -> bool:
        """Add one generated token; True when a stop string has appeared (the text is cut before it)."""
        if self.stopped:
            return True
        self._ids.append(token_id)
        seen = self._tokenizer.decode(self._ids[self._prefix : self._read])
        window = self._tokenizer.decode(self._ids[self._prefix :])
        if len(window) <= len(seen) or window.endswith(_REPLACEMENT_CHAR):
            return False
        self._prefix, self._read = self._read, len(self._ids)
        return self._append(window[len(seen) :])

    def flush(self) -> None:
        """At the end of generation, emit whatever is still held back (e.g. an incomplete character)."""
        if self.stopped or self._read == len(self._ids):
            return
        seen = self._tokenizer.decode(self._ids[self._prefix : self._read])
        self._append(self._tokenizer.decode(self._ids[self._prefix :])[len(seen) :])
        self._read = len(self._ids)

    def _append(self, delta: str) -> bool:
        search_from = max(0, len(self.text) - self._longest_stop + 1)
        self.text += delta
        hits = [i for i in (self.text.find(s, search_from) for s in self._stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True
        return self.stopped


def _id_text(tokenizer: Tokenizer, token_id: int | None) -> str | None:
    return tokenizer.id_to_token(token_id) if token_id is not None else None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointFileError(f"{path}: unreadable JSON: {exc}") from exc
    return data if isinstance(data, dict) else {}


def _read_template(directory: Path, settings: dict[str, Any]) -> str | None:
    """tokenizer_config.json's `chat_template` (a string, or named templates), else chat_template.jinja."""
    template = settings.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if isinstance(template, str):
        return template
    path = directory / TEMPLATE_FILE
    return path.read_text(encoding="utf-8") if path.is_file() else None
