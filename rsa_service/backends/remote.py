"""The `openai:` backend: any OpenAI-compatible server (vLLM, SGLang, llama.cpp, Zyphra Cloud) over aiohttp.

One request per completion (never `n`: llama.cpp rejects it and vLLM splits it anyway), explicit timeouts per
phase, retries only where `rsa_service.retry` says a retry can help, a client-side rate limit and a concurrency
cap. aiohttp errors and error statuses are translated at the boundary (`openai_wire`) into the `backends.base` tree.

aiohttp rather than httpx2 (which the SDK uses): this client sits on the critical path of every round, between
one round's answers and the next round's requests, and aiohttp's C parser and pool cost less CPU per request
(`benchmarks/README.md`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import ssl
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import aiohttp
import httpx2
from asyncio_throttle import Throttler  # type: ignore[attr-defined]  # the package has no __all__ or py.typed
from pydantic import ValidationError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from rsa_service.backends.aiohttp_retry import AIOHTTP_ERRORS, tenacity_wait
from rsa_service.backends.base import (
    BackendError,
    BackendOptions,
    BackendUnavailableError,
    Capabilities,
    Generation,
    GenerationRequest,
    PermanentBackendError,
    TransientBackendError,
    Usage,
    aborted_usage,
)
from rsa_service.backends.openai_wire import (
    BODY_EXCERPT_CHARS,
    FINISH_REASONS,
    Aborted,
    Answer,
    Choice,
    Completion,
    ModelList,
    NotOpenAI,
    ReportedUsage,
    Unreachable,
    http_error,
    reported_usage,
    transport_error,
)
from rsa_service.backends.token_counting import OffsetCounter, ServerCounter, TokenCounter
from rsa_service.core.reasoning import THINK_OPEN, split_reasoning
from rsa_service.core.tails import Tail
from rsa_service.metrics import RETRIES
from rsa_service.retry import RetryPolicy

log = logging.getLogger(__name__)

# Connections beyond the generation cap, so tokenize and /models calls never queue behind long rollouts.
AUXILIARY_CONNECTIONS = 8
# Connection attempts a server that has never answered gets: a wrong URL or a server that is not up says so at
# once instead of after minutes of backoff; once it has answered, a refused connection is a restart and gets the
# whole retry budget.
FIRST_CONTACT_ATTEMPTS = 2


@dataclass(frozen=True)
class _Counters:
    prompts: TokenCounter
    tails: TokenCounter


def _count_retry(state: RetryCallState) -> None:
    """tenacity's `before_sleep`: one more retry, by what the failed attempt ran into."""
    exc = state.outcome.exception() if state.outcome is not None else None
    if exc is not None:
        RETRIES.labels(AIOHTTP_ERRORS.cause(exc)).inc()


def _compact_json(body: Any) -> str:
    """Request bodies as httpx writes them: no spaces, UTF-8 as is (prompts are mostly text), no NaN."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _environment_proxy(url: str) -> str | None:
    """The proxy HTTP(S)_PROXY names for `url` unless NO_PROXY exempts it, as httpx honours them.

    Looked up once per backend: aiohttp's `trust_env` looks the environment (and ~/.netrc) up again on every
    request, which costs more than the rest of the request.
    """
    parts = urllib.parse.urlsplit(url)
    if urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return urllib.request.getproxies().get(parts.scheme)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One TLS context for every client: loading the CA bundle is slow, and once per process is enough."""
    return httpx2.create_ssl_context()  # certifi's bundle, honouring SSL_CERT_FILE, as the SDK does


class RemoteBackend:
    """A Backend over an OpenAI-compatible HTTP API rooted at `base_url` (e.g. `http://127.0.0.1:8000/v1`).

    Safe to share between tasks of one event loop; its connections open on first use, in that loop.
    """

    def __init__(self, base_url: str, options: BackendOptions | None = None) -> None:
        self.options = options or BackendOptions()
        self.base_url = base_url.rstrip("/")
        # vLLM, SGLang and llama.cpp serve /tokenize beside /v1, not under it.
        self.root_url = self.base_url.removesuffix("/v1")
        opts = self.options
        self._session: aiohttp.ClientSession | None = None
        self._proxy = _environment_proxy(self.base_url)
        self._slots = asyncio.Semaphore(opts.max_concurrency)
        self._throttler = self._make_throttler(opts.requests_per_s)
        self._policy = RetryPolicy(
            max_retries=opts.max_retries,
            backoff_base_s=opts.retry_backoff_s,
            max_wait_s=opts.retry_max_wait_s,
        )
        self._models_lock = asyncio.Lock()
        self._counter_lock = asyncio.Lock()
        self._model: str | None = opts.model
        self._context_length: int | None = None
        self._models_listed = False
        self._counters: _Counters | None = None
        self._separate_reasoning = False
        self._warned_no_usage = False
        self._answered = False  # any HTTP answer at all, error statuses included

    @classmethod
    def from_spec(cls, location: str, options: BackendOptions) -> RemoteBackend:
        """Entry point of the `openai:` scheme: `location` is the API base URL, `/v1` included."""
        return cls(location, options)

    @staticmethod
    def _make_throttler(requests_per_s: float | None) -> Throttler | None:
        if requests_per_s is None:
            return None
        # One request per 1/rate seconds: smooth pacing, no bursts, and fractional rates work.
        period = 1.0 / requests_per_s
        return Throttler(rate_limit=1, period=period, retry_interval=min(0.01, period / 4))

    # -- the Backend protocol ------------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> Generation:
        model = await self._model_name()
        chat = request.messages is not None
        body = self._request_body(request, model)
        path = "/chat/completions" if chat else "/completions"
        url = self.base_url + path
        failures: list[BackendError] = []
        headers = {self.options.session_header: request.lineage} if request.lineage else None
        try:
            data = await self._call("POST", url, body, generation=True, headers=headers, failures=failures)
        except BackendError as exc:
            exc.usage = await self._spent_on(failures, request)
            raise
        retry_usage = await self._spent_on(failures, request)
        try:
            completion = Completion.model_validate(data)
        except ValidationError as exc:
            spent = retry_usage + reported_usage(data)
            raise NotOpenAI(f"{url} answered JSON that is not an OpenAI completion: {exc}", usage=spent) from exc
        choice = completion.choices[0]
        opened = not chat and (request.prompt or "").rstrip().endswith(THINK_OPEN)
        reasoning, answer = self._split(choice, opened=opened)
        usage = await self._usage(completion.usage, request, reasoning + answer)
        finish = FINISH_REASONS.get(choice.finish_reason or "stop", "stop")
        return Generation(text=answer, reasoning=reasoning, finish_reason=finish, usage=usage, retry_usage=retry_usage)

    async def _spent_on(self, failures: list[BackendError], request: GenerationRequest) -> Usage:
        """What the failed attempts of one generation cost: what the server reported, and an upper bound for
        each attempt it never answered."""
        spent = sum((failure.usage for failure in failures), Usage())
        aborted = sum(isinstance(failure, Aborted) for failure in failures)
        if aborted:
            bound = await aborted_usage(self, request)
            spent += sum((bound for _ in range(aborted)), Usage())
        return spent

    async def count_tokens(self, request: GenerationRequest) -> int:
        counter = (await self._token_counters()).prompts
        if request.messages is not None:
            return await counter.count_messages(request.messages)
        return await counter.count_prompt(request.prompt or "")

    async def tail(self, text: str, max_tokens: int, *, tokens_hint: int | None = None) -> Tail:
        return await (await self._token_counters()).tails.tail(text, max_tokens, tokens_hint=tokens_hint)

    async def capabilities(self) -> Capabilities:
        await self._list_models()
        counter = (await self._token_counters()).prompts
        return Capabilities(
            model=await self._model_name(),
            context_length=self._context_length,
            separate_reasoning=self._separate_reasoning,
            exact_tokenizer=counter.exact,
        )

    async def probe(self) -> None:
        await self._attempt("GET", self.base_url + "/models", None, generation=False)

    async def aclose(self) -> None:
        """Close the connections; a later call opens new ones (a pool may retire a backend a job still holds)."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- requests ------------------------------------------------------------------------------------------

    @staticmethod
    def _request_body(request: GenerationRequest, model: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
        }
        if request.messages is not None:
            body["messages"] = [m.model_dump() for m in request.messages]
        else:
            body["prompt"] = request.prompt
        optional = {"seed": request.seed, "top_k": request.top_k, "min_p": request.min_p}
        body.update({key: value for key, value in optional.items() if value is not None})
        if request.stop:
            body["stop"] = list(request.stop)
        return body

    def _http(self) -> aiohttp.ClientSession:
        """The session, opened on first use: aiohttp binds it to the running loop."""
        if self._session is None:
            opts = self.options
            connector = aiohttp.TCPConnector(limit=opts.max_concurrency + AUXILIARY_CONNECTIONS, ssl=_ssl_context())
            self._session = aiohttp.ClientSession(
                connector=connector,
                # Per phase, no total: a rollout may stream for an hour; silence for `read` is what fails it.
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=opts.connect_timeout_s, sock_read=opts.read_timeout_s
                ),
                headers={"Authorization": f"Bearer {opts.api_key}"} if opts.api_key else None,
                json_serialize=_compact_json,
            )
        return self._session

    @asynccontextmanager
    async def _gate(self, generation: bool) -> AsyncIterator[None]:
        """Generations take a concurrency slot and a rate-limit token; tokenize and /models calls do not."""
        if not generation:
            yield
            return
        async with self._slots:
            if self._throttler is not None:
                await self._throttler.acquire()
            yield

    async def _call(
        self,
        method: str,
        url: str,
        body: dict[str, Any] | None = None,
        *,
        generation: bool,
        headers: Mapping[str, str] | None = None,
        failures: list[BackendError] | None = None,
    ) -> Any:
        """One logical call, retried per `rsa_service.retry`: the parsed JSON of the successful answer. Each failed
        attempt is appended to `failures`, so a generation can count what its retries cost."""
        retrying = AsyncRetrying(
            # tenacity combines a stop with any predicate of the retry state; its annotations accept only stop_base.
            stop=stop_after_attempt(self._policy.max_retries + 1) | self._never_answered,  # type: ignore[operator]
            wait=tenacity_wait(self._policy),
            retry=retry_if_exception_type(TransientBackendError),
            before_sleep=_count_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    try:
                        return await self._attempt(method, url, body, generation=generation, headers=headers)
                    except BackendError as exc:
                        if failures is not None:
                            failures.append(exc)
                        raise
        except Unreachable as exc:
            raise BackendUnavailableError(f"cannot reach {url}: {exc}") from exc
        raise AssertionError("tenacity ended without a result")  # pragma: no cover

    def _never_answered(self, state: RetryCallState) -> bool:
        """tenacity `stop=`: give up early on connecting to a server that has not answered yet (see
        FIRST_CONTACT_ATTEMPTS)."""
        failed = state.outcome.exception() if state.outcome is not None else None
        return isinstance(failed, Unreachable) and not self._answered and state.attempt_number >= FIRST_CONTACT_ATTEMPTS

    async def _attempt(
        self,
        method: str,
        url: str,
        body: dict[str, Any] | None,
        *,
        generation: bool,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        async with self._gate(generation):
            try:
                async with self._http().request(method, url, json=body, proxy=self._proxy, headers=headers) as response:
                    answer = Answer(response.status, response.headers, await response.read())
                self._answered = True
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise transport_error(method, url, exc) from exc
        if not 200 <= answer.status < 300:
            raise http_error(method, url, answer)
        try:
            return json.loads(answer.body)
        except ValueError as exc:
            kind = answer.headers.get("content-type", "no content type")
            raise NotOpenAI(f"{url} answered {kind}, not OpenAI-compatible JSON: {answer.excerpt()!r}") from exc

    # -- parsing -------------------------------------------------------------------------------------------

    def _split(self, choice: Choice, *, opened: bool) -> tuple[str, str]:
        """(reasoning, answer): vLLM's separate field (`reasoning_content`/`reasoning`) or inline tags."""
        message = choice.message
        if message is None:
            return split_reasoning(choice.text or "", thinking_opened=opened)
        separate = message.reasoning_content or message.reasoning
        if separate:
            self._separate_reasoning = True
            return separate.strip(), (message.content or "").strip()
        return split_reasoning(message.content or "", thinking_opened=opened)

    async def _usage(self, reported: ReportedUsage | None, request: GenerationRequest, output: str) -> Usage:
        if reported is not None:
            return Usage(prompt_tokens=reported.prompt_tokens, completion_tokens=reported.completion_tokens)
        if not self._warned_no_usage:
            self._warned_no_usage = True
            log.warning("%s returns no usage; counting with this backend's tokenizer instead", self.base_url)
        completion_tokens = await (await self._token_counters()).tails.count_text(output)
        return Usage(prompt_tokens=await self.count_tokens(request), completion_tokens=completion_tokens)

    # -- discovery -----------------------------------------------------------------------------------------

    async def _list_models(self) -> None:
        """GET /models once: the default model name and vLLM's `max_model_len`."""
        async with self._models_lock:
            if self._models_listed:
                return
            url = self.base_url + "/models"
            try:
                listing = ModelList.model_validate(await self._call("GET", url, generation=False))
            except ValidationError as exc:
                raise NotOpenAI(f"{url} answered JSON that is not an OpenAI model list: {exc}") from exc
            except PermanentBackendError:
                if self._model is None:
                    raise
                listing = ModelList(data=[])  # a server without /models still works when the model is named
            if self._model is None:
                if not listing.data:
                    raise BackendUnavailableError(f"{url} lists no models; set the model name")
                self._model = listing.data[0].id
            self._context_length = next((m.max_model_len for m in listing.data if m.id == self._model), None)
            self._models_listed = True

    async def _model_name(self) -> str:
        if self._model is None:
            await self._list_models()
        assert self._model is not None
        return self._model

    async def _token_counters(self) -> _Counters:
        """Prompts are counted by the server's tokenizer when it has one (it renders the chat template itself);
        tails are cut by a local tokenizer.json when one is given (its offsets cut in one pass, with no round
        trips); each falls back on the other, then on the documented approximation."""
        async with self._counter_lock:
            if self._counters is None:
                path = self.options.tokenizer_path
                local = await OffsetCounter.from_tokenizer_json(path) if path else None
                server = await self._probe_server_tokenizer()
                if server is None and local is None:
                    log.warning(
                        "%s has no tokenize endpoint and no tokenizer_path is set: token counts and tails are "
                        "estimates",
                        self.base_url,
                    )
                either: TokenCounter = local or server or OffsetCounter.approximate()
                self._counters = _Counters(prompts=server or either, tails=local or either)
            return self._counters

    async def _probe_server_tokenizer(self) -> ServerCounter | None:
        """Ask {root}/tokenize in vLLM/SGLang form, then in llama.cpp form. Unreachable servers propagate."""
        model = await self._model_name()
        url = self.root_url + "/tokenize"

        async def field(payload: dict[str, Any], name: str, kind: type) -> Any:
            data = await self._call("POST", url, payload, generation=False)
            value = data.get(name) if isinstance(data, dict) else None
            if not isinstance(value, kind):
                excerpt = str(data)[:BODY_EXCERPT_CHARS]
                raise NotOpenAI(f"{url} answered without a `{name}` {kind.__name__}: {excerpt}")
            return value

        async def vllm_count(body: dict[str, object]) -> int:
            count: int = await field({"model": model, **body}, "count", int)
            return count

        async def llama_count(body: dict[str, object]) -> int:
            payload = {"content": body["prompt"], "add_special": body["add_special_tokens"]}
            return len(await field(payload, "tokens", list))

        for count, chat_template in ((vllm_count, True), (llama_count, False)):
            try:
                await count({"prompt": "probe", "add_special_tokens": False})
            except (PermanentBackendError, NotOpenAI):
                continue
            return ServerCounter(count, chat_template=chat_template)
        return None
