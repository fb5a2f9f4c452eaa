"""`EngineBackend`: the Backend protocol over the in-process ZAYA1 engine (spec `engine:/path/to/checkpoint`)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from rsa_service.backends.base import (
    BackendOptions,
    Capabilities,
    ContextLengthError,
    Generation,
    GenerationRequest,
    PermanentBackendError,
    Usage,
)
from rsa_service.backends.engine.batcher import DEFAULT_STEP_TOKENS, Batcher, GenSequence
from rsa_service.backends.engine.config import ZayaConfig
from rsa_service.backends.engine.factory import open_engine
from rsa_service.backends.engine.sampling import SamplingParams
from rsa_service.backends.engine.scheduler import AsyncScheduler
from rsa_service.backends.engine.tokenizer import ChatTokenizer, thinking_opened
from rsa_service.core.reasoning import split_reasoning
from rsa_service.core.tails import Tail, fitting_tail

logger = logging.getLogger(__name__)


class EngineBackend:
    """ZAYA1 generating in this process. Concurrent `generate` calls share one continuously batched engine."""

    def __init__(
        self,
        config: ZayaConfig,
        tokenizer: ChatTokenizer,
        batcher: Batcher,
        *,
        name: str,
        enable_thinking: bool = True,
    ) -> None:
        self.config, self.tokenizer, self.batcher = config, tokenizer, batcher
        self._name = name
        self._enable_thinking = enable_thinking
        self._scheduler = AsyncScheduler(batcher)

    @classmethod
    def from_spec(
        cls,
        location: str,
        options: BackendOptions,
        *,
        skip_returns_input: bool = False,
        enable_thinking: bool = True,
        prefill_chunk_tokens: int = DEFAULT_STEP_TOKENS,
        compile_decode: bool | None = None,
    ) -> EngineBackend:
        """Load the checkpoint directory `location` (the part after `engine:`) with `options.dtype`/`device`.

        `skip_returns_input` selects the release-time skip route; the default follows upstream transformers.
        `prefill_chunk_tokens` is the token budget of one engine step (decode tokens plus prompt chunks).
        `compile_decode` None follows `options.compile`, then RSA_ENGINE_COMPILE (default on); the decode step is
        compiled for every batch size up to `options.max_concurrency` before this returns.
        """
        directory = Path(location).expanduser()
        engine = open_engine(
            directory,
            options,
            skip_returns_input=skip_returns_input,
            prefill_chunk_tokens=prefill_chunk_tokens,
            compile_decode=compile_decode,
        )
        name = options.model or directory.name
        return cls(engine.config, engine.tokenizer, engine.batcher, name=name, enable_thinking=enable_thinking)

    def render(self, request: GenerationRequest) -> tuple[list[int], bool]:
        """Prompt token ids of `request`, and whether the prompt leaves a <think> block open."""
        if request.messages is not None:
            text = self.tokenizer.render(
                [m.model_dump() for m in request.messages], enable_thinking=self._enable_thinking
            )
            return self.tokenizer.encode(text), thinking_opened(text)
        if request.prompt is None:
            raise PermanentBackendError("request: one of 'messages' or 'prompt' is required")
        return self.tokenizer.encode_plain(request.prompt), thinking_opened(request.prompt)

    async def generate(self, request: GenerationRequest) -> Generation:
        prompt_ids, opened = await asyncio.to_thread(self.render, request)  # a long prompt: off the event loop
        limit = self.config.max_position_embeddings
        if len(prompt_ids) + request.max_tokens > limit:
            raise ContextLengthError(
                f"max_tokens: prompt ({len(prompt_ids)} tokens) + max_tokens ({request.max_tokens}) exceeds the "
                f"context length {limit}"
            )
        params = SamplingParams(
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            top_k=request.top_k,
            min_p=request.min_p,
            seed=request.seed,
            stop=request.stop,
        )
        done = await self._scheduler.run(GenSequence(prompt_ids, params, stream=self.tokenizer.stream(request.stop)))
        reasoning, answer = split_reasoning(done.text, thinking_opened=opened)
        return Generation(
            text=answer,
            reasoning=reasoning,
            finish_reason=done.finish_reason or "error",
            usage=Usage(prompt_tokens=len(prompt_ids), completion_tokens=len(done.output_ids)),
        )

    async def count_tokens(self, request: GenerationRequest) -> int:
        return len((await asyncio.to_thread(self.render, request))[0])

    async def tail(self, text: str, max_tokens: int, *, tokens_hint: int | None = None) -> Tail:
        return await asyncio.to_thread(fitting_tail, text, self.tokenizer.token_starts, max_tokens)

    async def capabilities(self) -> Capabilities:
        return Capabilities(
            model=self._name,
            context_length=self.config.max_position_embeddings,
            separate_reasoning=True,
            exact_tokenizer=True,
        )

    def skip_route_counts(self) -> list[int]:
        """Times each layer's MoE took the skip route, over every real token processed so far."""
        return list(self.batcher.runner.skip_counts)

    async def aclose(self) -> None:
        await self._scheduler.aclose()
