"""RemoteBackend against a real OpenAI-compatible server on 127.0.0.1 (tests.modelserver); an injected transport
only for narrow client cases the model server cannot express (llama.cpp's tokenizer, malformed JSON)."""

from __future__ import annotations

import asyncio
import http.server
import itertools
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import RawTestServer
from prometheus_client import REGISTRY
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from rsa_service.backends import open_backend
from rsa_service.backends.base import (
    BackendOptions,
    BackendUnavailableError,
    ChatMessage,
    ContextLengthError,
    GenerationRequest,
    PermanentBackendError,
)
from rsa_service.backends.remote import FIRST_CONTACT_ATTEMPTS, RemoteBackend
from rsa_service.core.tails import tail_from_offsets
from tests.modelserver import (
    ModelServerConfig,
    ModelServerHandle,
    choose_answer,
    correct_answer,
    serve_in_subprocess,
    serve_in_thread,
    tokenize,
    write_tokenizer_json,
)

USAGE = {"prompt_tokens": 5, "completion_tokens": 3}
FAST = {"retry_backoff_s": 0.01, "retry_max_wait_s": 2.0, "max_retries": 3}
PROBLEM = "Compute the value. ANSWER=42"
MULTIBYTE = "数学の問題を解く。Größe naïve café — déjà vu 🙂 résumé; ∑ᵢ xᵢ² ≤ 1.\n"


def chat(content: str = PROBLEM, **fields: Any) -> GenerationRequest:
    return GenerationRequest(messages=(ChatMessage(role="user", content=content),), **{"max_tokens": 400, **fields})


@pytest.fixture(scope="module")
def shared_server() -> Iterator[ModelServerHandle]:
    with serve_in_thread(ModelServerConfig(reasoning_words=40)) as server:
        yield server


@pytest.fixture
def server(shared_server: ModelServerHandle) -> ModelServerHandle:
    shared_server.reset()
    return shared_server


@pytest.fixture
async def backend(server: ModelServerHandle) -> AsyncIterator[RemoteBackend]:
    async with RemoteBackend(server.base_url, BackendOptions(**FAST)) as remote:
        yield remote


# -- generation ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["reasoning_content", "reasoning", "inline"])
async def test_reasoning_styles_are_separated(style: str) -> None:
    with serve_in_thread(ModelServerConfig(reasoning_style=style, reasoning_words=30, p_correct=1.0)) as server:
        async with RemoteBackend(server.base_url, BackendOptions(**FAST)) as remote:
            generation = await remote.generate(chat(seed=1))
            capabilities = await remote.capabilities()
    assert generation.finish_reason == "stop"
    assert generation.text == "The final answer is \\boxed{42}."
    assert generation.reasoning.endswith("So the answer is \\boxed{42}.")
    assert "<think>" not in generation.reasoning + generation.text
    assert capabilities.separate_reasoning is (style != "inline")


async def test_hidden_reasoning_leaves_only_the_answer() -> None:
    with serve_in_thread(ModelServerConfig(reasoning_style="hidden", p_correct=1.0)) as server:
        async with RemoteBackend(server.base_url, BackendOptions(**FAST)) as remote:
            generation = await remote.generate(chat(seed=1))
    assert (generation.reasoning, generation.text) == ("", "The final answer is \\boxed{42}.")


async def test_plain_completion_splits_inline_reasoning(backend: RemoteBackend, server: ModelServerHandle) -> None:
    generation = await backend.generate(GenerationRequest(prompt=PROBLEM, max_tokens=400, seed=2))
    assert "\\boxed{" in generation.text
    assert generation.reasoning.startswith(generation.reasoning.strip()) and generation.reasoning
    assert server.requests()[0]["path"] == "/v1/completions"


async def test_usage_is_exact(server: ModelServerHandle) -> None:
    with serve_in_thread(ModelServerConfig(reasoning_style="inline")) as inline:
        async with RemoteBackend(inline.base_url, BackendOptions(**FAST)) as remote:
            request = chat(seed=5)
            generation = await remote.generate(request)
            assert generation.usage.prompt_tokens == await remote.count_tokens(request)
            raw = f"<think>\n{generation.reasoning}\n</think>\n\n{generation.text}"
            assert generation.usage.completion_tokens == len(tokenize(raw))


async def test_truncation_is_finish_reason_length(backend: RemoteBackend) -> None:
    generation = await backend.generate(chat(max_tokens=12, seed=3))
    assert generation.finish_reason == "length"
    assert generation.usage.completion_tokens == 12
    assert generation.text == "" and generation.reasoning


async def test_missing_usage_is_counted_and_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    with serve_in_thread(ModelServerConfig(usage=False, reasoning_style="inline")) as server:
        async with RemoteBackend(server.base_url, BackendOptions(**FAST)) as remote:
            with caplog.at_level(logging.WARNING, logger="rsa_service.backends.remote"):
                first = await remote.generate(chat(seed=1))
                await remote.generate(chat(seed=2))
            assert first.usage.prompt_tokens == await remote.count_tokens(chat(seed=1))
            assert first.usage.completion_tokens > 0
    assert sum("no usage" in r.message for r in caplog.records) == 1


async def test_sampling_fields_sent_only_when_set_and_never_n(
    backend: RemoteBackend, server: ModelServerHandle
) -> None:
    await backend.generate(chat(seed=1))
    await backend.generate(chat(seed=2, top_k=40, min_p=0.05, stop=("QED",), temperature=0.6, top_p=0.95))
    plain, tuned = (entry["body"] for entry in server.requests())
    assert "top_k" not in plain and "min_p" not in plain and "stop" not in plain
    assert {k: tuned[k] for k in ("top_k", "min_p", "stop", "temperature", "top_p", "seed", "model")} == {
        "top_k": 40,
        "min_p": 0.05,
        "stop": ["QED"],
        "temperature": 0.6,
        "top_p": 0.95,
        "seed": 2,
        "model": "toy",
    }
    assert all("n" not in entry["body"] for entry in server.requests())


async def test_open_backend_entry_point(server: ModelServerHandle) -> None:
    remote = open_backend(f"openai:{server.base_url}", BackendOptions(model="toy"))
    try:
        assert isinstance(remote, RemoteBackend)
        assert (await remote.capabilities()).context_length == 32768
    finally:
        await remote.aclose()


async def test_capabilities_report_model_and_context() -> None:
    with serve_in_thread(ModelServerConfig(model_id="zaya-toy", max_model_len=4096)) as server:
        async with RemoteBackend(server.base_url) as remote:
            capabilities = await remote.capabilities()
    assert capabilities.model == "zaya-toy"
    assert capabilities.context_length == 4096
    assert capabilities.exact_tokenizer
    assert not capabilities.separate_reasoning  # not learned before the first response


# -- retries and errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "attempts"),
    [
        ({"status": 429, "retry_after": 0, "times": 2}, 3),
        ({"status": 503}, 2),
        ({"status": 500, "times": 2}, 3),
        ({"drop_connection": True}, 2),
        ({"delay_s": 10}, 2),
    ],
    ids=["429", "503", "500x2", "dropped", "read-timeout"],
)
async def test_transient_failures_are_retried(server: ModelServerHandle, rule: dict[str, Any], attempts: int) -> None:
    server.set_faults([rule])
    async with RemoteBackend(server.base_url, BackendOptions(read_timeout_s=0.5, **FAST)) as remote:
        generation = await remote.generate(chat(seed=7))
    assert "\\boxed{" in generation.text
    log = server.requests()
    assert len(log) == attempts
    assert len({entry["key"] for entry in log}) == 1, "every attempt is the same logical request"
    assert log[-1]["status"] == 200


async def test_retry_after_is_honoured(server: ModelServerHandle) -> None:
    server.set_faults([{"status": 429, "retry_after": 0.3, "times": 2}])
    async with RemoteBackend(server.base_url, BackendOptions(**FAST)) as remote:
        started = time.monotonic()
        await remote.generate(chat(seed=1))
    # Backoff alone would wait about 0.01 + 0.02 s; the server asked for 0.3 s twice.
    assert time.monotonic() - started >= 0.55


async def test_retries_are_bounded(server: ModelServerHandle) -> None:
    server.set_faults([{"status": 503, "always": True, "message": "overloaded"}])
    async with RemoteBackend(server.base_url, BackendOptions(**FAST)) as remote:
        with pytest.raises(Exception, match="503: overloaded") as raised:
            await remote.generate(chat())
    assert type(raised.value).__name__ == "TransientBackendError"
    assert len(server.requests()) == FAST["max_retries"] + 1


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_permanent_errors_fail_at_once(backend: RemoteBackend, server: ModelServerHandle, status: int) -> None:
    server.set_faults([{"status": status, "message": "nope, not this", "always": True}])
    with pytest.raises(PermanentBackendError, match=f"{status}: nope, not this") as raised:
        await backend.generate(chat())
    assert not isinstance(raised.value, ContextLengthError)
    assert "/v1/chat/completions" in str(raised.value)
    assert len(server.requests()) == 1, "a permanent error must not be retried"


async def test_context_length_error(backend: RemoteBackend, server: ModelServerHandle) -> None:
    with pytest.raises(ContextLengthError, match="maximum context length is 32768"):
        await backend.generate(chat(max_tokens=40_000))
    assert len(server.requests()) == 1


async def test_api_key_is_sent_as_bearer() -> None:
    with serve_in_thread(ModelServerConfig(api_key="sekrit")) as server:
        async with RemoteBackend(server.base_url, BackendOptions(api_key="sekrit", **FAST)) as remote:
            assert "\\boxed{" in (await remote.generate(chat())).text
        async with RemoteBackend(server.base_url, BackendOptions(model="toy", **FAST)) as anonymous:
            with pytest.raises(PermanentBackendError, match="401"):
                await anonymous.generate(chat())


@pytest.fixture
def html_server() -> Iterator[str]:
    """A plain web server that answers every GET and POST with an HTML page."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def _page(self) -> None:
            body = b"<html><body>Welcome to nginx!</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _page

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("model", [None, "toy"])
async def test_non_openai_server_is_unavailable(html_server: str, model: str | None) -> None:
    async with RemoteBackend(html_server, BackendOptions(model=model, **FAST)) as remote:
        with pytest.raises(BackendUnavailableError, match=r"127\.0\.0\.1.*not OpenAI-compatible JSON.*nginx"):
            await remote.generate(chat())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_unreachable_server_is_unavailable_at_once() -> None:
    """A server that never answered gets FIRST_CONTACT_ATTEMPTS, not the whole (minutes-long) retry budget."""
    url = f"http://127.0.0.1:{free_port()}/v1"
    slow = {**FAST, "retry_backoff_s": 0.5, "retry_max_wait_s": 30.0, "max_retries": 6}
    started = time.monotonic()
    async with RemoteBackend(url, BackendOptions(model="toy", **slow)) as remote:
        with pytest.raises(BackendUnavailableError, match=f"cannot reach {url}/chat/completions"):
            await remote.generate(chat())
    assert time.monotonic() - started < 2  # one backoff of 0.25-0.5 s; the budget would be ~30 s


def connection_retries() -> float:
    return REGISTRY.get_sample_value("rsa_backend_retries_total", {"cause": "connection"}) or 0.0


async def test_a_server_that_answered_before_gets_the_whole_retry_budget_to_come_back() -> None:
    """A refused connection after the server has answered is a restart: retried until it is back."""
    completion = {"choices": [{"message": {"content": "\\boxed{1}"}}], "usage": USAGE}

    async def answer(_: web.BaseRequest) -> web.StreamResponse:
        return web.json_response(completion, headers={"Connection": "close"})  # every request connects anew

    port = free_port()
    options = BackendOptions(model="m", **{**FAST, "max_retries": 20, "retry_max_wait_s": 0.1})
    async with RemoteBackend(f"http://127.0.0.1:{port}/v1", options) as remote:
        async with RawTestServer(answer, host="127.0.0.1", port=port):
            await remote.generate(chat())

        async def restart_after_refusals() -> None:
            refused = connection_retries()
            while connection_retries() < refused + FIRST_CONTACT_ATTEMPTS + 1:  # noqa: ASYNC110 (a metric, no event)
                await asyncio.sleep(0.01)
            async with RawTestServer(answer, host="127.0.0.1", port=port):
                await asyncio.sleep(1)

        restart = asyncio.create_task(restart_after_refusals())
        assert (await remote.generate(chat(seed=2))).text == "\\boxed{1}"
        await restart


# -- throughput controls -------------------------------------------------------------------------------------


async def test_concurrency_cap_is_respected() -> None:
    with serve_in_thread(ModelServerConfig(latency_ms=100)) as server:
        async with RemoteBackend(server.base_url, BackendOptions(max_concurrency=3, **FAST)) as remote:
            await asyncio.gather(*(remote.generate(chat(seed=i)) for i in range(10)))
        log = server.log()
    assert len(log["requests"]) == 10
    assert log["max_in_flight"] == 3


async def test_rate_limit_paces_requests(server: ModelServerHandle) -> None:
    async with RemoteBackend(server.base_url, BackendOptions(requests_per_s=20, **FAST)) as remote:
        await remote.capabilities()
        started = time.monotonic()
        await asyncio.gather(*(remote.generate(chat(seed=i)) for i in range(5)))
    assert time.monotonic() - started >= 0.19  # four gaps of 1/20 s
    arrivals = [entry["time"] for entry in server.requests()]
    assert max(arrivals) - min(arrivals) >= 0.19


# -- token counting and tails --------------------------------------------------------------------------------


def long_text(repeats: int = 60) -> str:
    return "".join(f"Step {i}: {MULTIBYTE}" for i in range(repeats))


async def test_tail_by_server_bisection(backend: RemoteBackend, server: ModelServerHandle) -> None:
    text = long_text()
    tail = await backend.tail(text, 100)
    assert text.endswith(tail.text)
    assert tail.source_tokens == len(tokenize(text))
    # Count-only: `tokens` is the count of the suffix found, which bounds the boundary-trimmed text kept.
    kept = len(tokenize(tail.text))
    assert kept <= tail.tokens <= 100
    # Nearly as much as the cut made with the server tokenizer's own offsets (both then move to a clean boundary).
    starts = list(itertools.accumulate((len(piece) for piece in tokenize(text)), initial=0))[:-1]
    assert kept >= tail_from_offsets(text, starts, 100).tokens - 10
    # An interpolating search: probe + whole text + a count or two, far fewer than bisection's log2(len).
    assert server.log()["tokenize_calls"] <= 4


async def test_tail_with_a_usage_hint_counts_once(backend: RemoteBackend, server: ModelServerHandle) -> None:
    """The runner's estimate from usage replaces the whole-text count: one /tokenize call for the usual tail."""
    await backend.capabilities()  # the probe
    text = long_text()
    total = len(tokenize(text))
    for hint in (total, total * 21 // 20, total * 19 // 20):  # exact, and 5% either side
        before = server.log()["tokenize_calls"]
        tail = await backend.tail(text, 100, tokens_hint=hint)
        assert server.log()["tokenize_calls"] - before <= 2
        assert text.endswith(tail.text) and len(tokenize(tail.text)) <= tail.tokens <= 100
        assert tail.tokens >= 100 - 100 // 32  # in the band, as without the hint
        assert tail.source_tokens == hint


async def test_a_hint_that_overestimates_still_keeps_a_fitting_text_whole(backend: RemoteBackend) -> None:
    text = long_text(2)
    assert len(tokenize(text)) <= 100
    tail = await backend.tail(text, 100, tokens_hint=150)
    assert (tail.text, tail.trimmed) == (text, False)
    assert tail.tokens == tail.source_tokens == len(tokenize(text))


async def test_short_text_is_kept_whole(backend: RemoteBackend) -> None:
    tail = await backend.tail("short text", 100)
    assert (tail.text, tail.tokens, tail.trimmed) == ("short text", 3, False)


async def test_count_tokens_includes_chat_template(backend: RemoteBackend) -> None:
    request = chat("one two three")
    assert await backend.count_tokens(request) == len(tokenize("<|user|>\none two three\n<|assistant|>\n"))
    assert await backend.count_tokens(GenerationRequest(prompt="one two", max_tokens=5)) == 3


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small byte-level BPE: multi-byte characters become several tokens sharing one start offset."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([long_text(5)], trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tokenizer.save(str(path))
    return path


@pytest.mark.parametrize("budget", [7, 50, 333])
@pytest.mark.parametrize("text", [long_text(), "数学の問題" * 200], ids=["mixed", "cjk-no-spaces"])
async def test_tail_by_local_tokenizer_json(
    server: ModelServerHandle, tokenizer_json: Path, text: str, budget: int
) -> None:
    server.set_faults([{"path": "/tokenize", "status": 404, "always": True}])
    options = BackendOptions(tokenizer_path=str(tokenizer_json), **FAST)
    async with RemoteBackend(server.base_url, options) as remote:
        tail = await remote.tail(text, budget)
        assert (await remote.capabilities()).exact_tokenizer
    encode = Tokenizer.from_file(str(tokenizer_json)).encode
    assert text.endswith(tail.text) and tail.text
    assert tail.tokens <= budget
    assert len(encode(tail.text, add_special_tokens=False).ids) <= budget
    assert tail.source_tokens == len(encode(text, add_special_tokens=False).ids)


async def test_local_tokenizer_cuts_tails_and_the_server_counts_prompts(
    server: ModelServerHandle, tmp_path: Path
) -> None:
    """With both, tails need no round trip (the local offsets) while prompts keep the server's chat template."""
    options = BackendOptions(tokenizer_path=str(write_tokenizer_json(tmp_path / "tokenizer.json")), **FAST)
    async with RemoteBackend(server.base_url, options) as remote:
        assert (await remote.capabilities()).exact_tokenizer  # the server's tokenizer is probed once here
        probed = server.log()["tokenize_calls"]
        tail = await remote.tail(long_text(), 100)
        assert server.log()["tokenize_calls"] == probed
        assert await remote.count_tokens(chat("one two")) == len(tokenize("<|user|>\none two\n<|assistant|>\n"))
        assert server.log()["tokenize_calls"] == probed + 1
    assert tail.tokens == len(tokenize(tail.text)) <= 100 and long_text().endswith(tail.text)
    assert tail.source_tokens == len(tokenize(long_text()))


async def test_approximate_tokenizer_is_the_last_resort(
    server: ModelServerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    server.set_faults([{"path": "/tokenize", "status": 404, "always": True}])
    async with RemoteBackend(server.base_url, BackendOptions(**FAST)) as remote:
        with caplog.at_level(logging.WARNING, logger="rsa_service.backends.remote"):
            tail = await remote.tail(long_text(), 64)
            await remote.tail(long_text(), 32)
        assert not (await remote.capabilities()).exact_tokenizer
    assert tail.tokens <= 64 and long_text().endswith(tail.text)
    assert sum("estimates" in r.message for r in caplog.records) == 1


# -- server dialects (a one-handler server on 127.0.0.1) -------------------------------------------------------

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def answering(handler: Handler, calls: list[str] | None = None) -> AsyncIterator[RemoteBackend]:
    """A RemoteBackend talking to a server whose every request goes to `handler`; `calls` collects the paths."""

    async def record(request: web.BaseRequest) -> web.StreamResponse:
        if calls is not None:
            calls.append(request.path)
        return await handler(request)

    async with (
        RawTestServer(record, host="127.0.0.1") as server,
        RemoteBackend(str(server.make_url("/v1")), BackendOptions(model="m", **FAST)) as remote,
    ):
        yield remote


def replying(status: int, body: dict[str, Any]) -> Handler:
    async def reply(_: web.BaseRequest) -> web.StreamResponse:
        return web.json_response(body, status=status)

    return reply


async def test_the_environment_proxy_is_used_unless_no_proxy_exempts_the_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    targets: list[str] = []

    async def proxy(request: web.BaseRequest) -> web.StreamResponse:
        targets.append(str(request.url))  # a proxy receives the absolute URL
        return web.json_response({"object": "list", "data": [{"id": "m"}]})

    async with RawTestServer(proxy, host="127.0.0.1") as server:
        monkeypatch.setenv("HTTP_PROXY", str(server.make_url("")))
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        async with RemoteBackend("http://llm.test/v1", BackendOptions(**FAST)) as remote:
            assert (await remote.capabilities()).model == "m"
        assert targets[0] == "http://llm.test/v1/models"  # then the /tokenize probes
        asked = len(targets)
        monkeypatch.setenv("NO_PROXY", "llm.test")
        async with RemoteBackend("http://llm.test/v1", BackendOptions(**{**FAST, "max_retries": 0})) as remote:
            with pytest.raises(BackendUnavailableError):
                await remote.capabilities()  # straight to llm.test, which does not resolve
        assert len(targets) == asked


async def test_llama_cpp_tokenizer_flavour() -> None:
    async def tokenize_route(request: web.BaseRequest) -> web.StreamResponse:
        payload = await request.json()
        if "content" not in payload:
            return web.json_response({"error": {"message": "'content' is required"}}, status=400)
        return web.json_response({"tokens": list(range(len(payload["content"].split())))})

    async with answering(tokenize_route) as remote:
        # No server-side chat template: the documented per-message estimate applies.
        assert await remote.count_tokens(chat("a b c")) == 3 + 4 + 3
        tail = await remote.tail("w " * 50, 10)
    assert tail.tokens <= 10 and tail.source_tokens == 50


async def test_json_without_choices_is_unavailable() -> None:
    async with answering(replying(200, {"status": "ok"})) as remote:
        with pytest.raises(BackendUnavailableError, match="not an OpenAI completion"):
            await remote.generate(chat())


async def test_vllm_legacy_error_shape_maps_to_context_length() -> None:
    error = {"object": "error", "message": "This model's maximum context length is 8192 tokens.", "code": 400}
    calls: list[str] = []
    async with answering(replying(400, error), calls) as remote:
        with pytest.raises(ContextLengthError, match="400: This model's maximum context length is 8192"):
            await remote.generate(chat())
    assert calls == ["/v1/chat/completions"]


# -- the model server itself ---------------------------------------------------------------------------------


def test_model_server_answers_are_meaningful_for_rsa() -> None:
    assert correct_answer("Find x. ANSWER=\\frac{1}{2}") == "\\frac{1}{2}"
    assert correct_answer("no hint") == correct_answer("no hint")
    assert all(choose_answer(PROBLEM, seed, 1.0) == "42" for seed in range(20))
    assert all(choose_answer(PROBLEM, seed, 0.0) in {"43", "44", "45"} for seed in range(20))
    share = sum(choose_answer(PROBLEM, seed, 0.6) == "42" for seed in range(400)) / 400
    assert 0.5 < share < 0.7
    candidates = "".join(f"--- Candidate {i} ---\\nso \\boxed{{{a}}}\\n" for i, a in enumerate("7552", 1))
    assert choose_answer(f"{PROBLEM}\\n{candidates}Put the answer in \\boxed{{}}.", 0, 0.0) == "5"
    tie = "--- Candidate 1 ---\\n\\boxed{9}\\n--- Candidate 2 ---\\n\\boxed{8}"
    assert choose_answer(f"{PROBLEM}\\n{tie}", 0, 0.0) == "9"
    assert choose_answer(f"{PROBLEM}\\n--- Earlier attempt ---\\n\\boxed{{11}}", 0, 0.0) == "11"


async def test_model_server_as_a_subprocess() -> None:
    config = ModelServerConfig(reasoning_style="reasoning", usage=False, faults=[{"status": 503}], p_correct=1.0)
    with serve_in_subprocess(config) as server:
        assert server.process is not None
        async with RemoteBackend(server.base_url, BackendOptions(**FAST)) as remote:
            generation = await remote.generate(chat(seed=1))
            assert generation.reasoning.endswith("\\boxed{42}.") and generation.usage.completion_tokens > 0
            assert [entry["status"] for entry in server.requests()] == [503, 200]
            server.process.kill()
            server.process.wait()
            with pytest.raises(BackendUnavailableError, match="cannot reach"):
                await remote.generate(chat(seed=2))
