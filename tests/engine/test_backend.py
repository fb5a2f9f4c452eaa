"""EngineBackend through asyncio: concurrent calls batched together, cancellation, tokens, tails, errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from rsa_service.backends import open_backend
from rsa_service.backends.base import (
    Backend,
    BackendOptions,
    ChatMessage,
    ContextLengthError,
    GenerationRequest,
)
from rsa_service.backends.engine.backend import EngineBackend

pytestmark = pytest.mark.engine
OPTIONS = BackendOptions(dtype="float32", max_concurrency=8)


def _request(i: int, **overrides: object) -> GenerationRequest:
    fields: dict = {
        "messages": (ChatMessage(role="user", content=f"Problem {i}: what is {i} + {i}? Think step by step."),),
        "max_tokens": 6 + 3 * i,
        "temperature": 0.8,
        "top_k": 40,
        "seed": 100 + i,
    }
    return GenerationRequest(**{**fields, **overrides})


@pytest.fixture
async def backend(tiny_checkpoint: Path) -> AsyncIterator[EngineBackend]:
    engine = EngineBackend.from_spec(str(tiny_checkpoint), OPTIONS)
    yield engine
    await engine.aclose()


async def test_spec_resolution_opens_the_engine(tiny_checkpoint: Path) -> None:
    opened = open_backend(f"engine:{tiny_checkpoint}", OPTIONS)
    try:
        assert isinstance(opened, EngineBackend) and isinstance(opened, Backend)
        caps = await opened.capabilities()
        assert caps.exact_tokenizer and caps.separate_reasoning and caps.context_length == 4096
    finally:
        await opened.aclose()


async def test_concurrent_generates_are_batched_and_match_sequential_runs(backend: EngineBackend) -> None:
    steps = 0
    original = backend.batcher.step

    def counting_step(*args: object, **kwargs: object) -> list:
        nonlocal steps
        steps += 1
        return original(*args, **kwargs)

    backend.batcher.step = counting_step  # type: ignore[method-assign]
    together = await asyncio.gather(*(backend.generate(_request(i)) for i in range(4)))
    batched_steps = steps
    alone = [await backend.generate(_request(i)) for i in range(4)]
    assert together == alone
    # Sequential runs need a step per token of each request; batched ones overlap them.
    assert batched_steps < sum(6 + 3 * i for i in range(4))
    for i, generation in enumerate(together):
        assert generation.usage.prompt_tokens == await backend.count_tokens(_request(i))
        assert 0 < generation.usage.completion_tokens <= 6 + 3 * i
        assert generation.finish_reason in {"stop", "length"}


async def test_the_opened_think_block_makes_the_output_reasoning(backend: EngineBackend) -> None:
    generation = await backend.generate(_request(1, max_tokens=12, temperature=0))
    assert generation.finish_reason == "length"
    assert generation.text == "" and generation.reasoning  # no </think> yet: everything is reasoning


async def test_cancelling_one_generate_removes_it_and_spares_the_others(backend: EngineBackend) -> None:
    loop, stepped, original = asyncio.get_running_loop(), asyncio.Event(), backend.batcher.step

    def signalling_step(*args: object, **kwargs: object) -> list:
        finished = original(*args, **kwargs)
        loop.call_soon_threadsafe(stepped.set)
        return finished

    backend.batcher.step = signalling_step  # type: ignore[method-assign]
    long = asyncio.create_task(backend.generate(_request(0, max_tokens=400, temperature=0)))
    others = [asyncio.create_task(backend.generate(_request(i))) for i in (1, 2)]
    await stepped.wait()
    assert backend.batcher.running
    long.cancel()
    with pytest.raises(asyncio.CancelledError):
        await long
    results = await asyncio.gather(*others)
    assert backend.batcher.idle
    assert results == [await backend.generate(_request(i)) for i in (1, 2)]


async def test_tail_and_context_limit(backend: EngineBackend) -> None:
    text = "First line of the trace.\nThen a longer second line that keeps going. And a final sentence here."
    tail = await backend.tail(text, 8)
    assert tail.trimmed and tail.tokens <= 8 and text.endswith(tail.text)
    with pytest.raises(ContextLengthError, match="max_tokens"):
        await backend.generate(_request(0, max_tokens=4096))


async def test_stop_string_cuts_the_text(backend: EngineBackend) -> None:
    free = await backend.generate(_request(3, temperature=0, max_tokens=30))
    assert len(free.reasoning) > 6
    stop = free.reasoning[3:6]
    cut = await backend.generate(_request(3, temperature=0, max_tokens=30, stop=(stop,)))
    assert cut.finish_reason == "stop"
    assert stop not in cut.reasoning and free.reasoning.startswith(cut.reasoning)
