"""A deterministic OpenAI-compatible model server, for tests and benchmarks that need real HTTP.

It answers like a reasoning model whose behaviour RSA can act on:

- The *problem* is the last user message (or the prompt). Its correct answer is the `xyz` of an `ANSWER=xyz`
  in the text, else an integer in [0, 1000) from its sha256.
- A fresh request answers correctly with probability `p_correct`, else with one of three wrong answers; the
  draw depends only on (problem, seed), so a seed fixes the outcome.
- An aggregation request (its text contains "Candidate 1" or "Earlier attempt") answers with the majority of
  the `\\boxed{}` answers after that marker (ties: the first seen), so voting and aggregation are testable.
- Output is `<think>` + `reasoning_words` words of reasoning ending in the boxed answer + `</think>` + a short
  answer, cut to `max_tokens` tokens (finish_reason "length") or at a stop string. Its tokenizer (regex words,
  punctuation, whitespace runs, `<|role|>` and think tags as single tokens) is served at POST /tokenize, and
  `usage` is exact with respect to it. Chat prompts render as `<|role|>\\ncontent\\n` per message, then
  `<|assistant|>\\n`.
- Prompt + max_tokens beyond `max_model_len` is a 400 with vLLM's "maximum context length" message.

Routes: GET /v1/models, POST /v1/chat/completions, POST /v1/completions, POST /tokenize (vLLM form:
`{"prompt"}` or `{"messages"}` → `{"count", "tokens", "max_model_len"}`), and the control routes
GET /_requests, POST /_reset, GET|POST /_faults.

GET /_requests → `{"requests": [...], "in_flight": n, "max_in_flight": n, "tokenize_calls": n, "spent": {...}}`;
`spent` is `{"prompt_tokens", "completion_tokens"}` summed over every generation the model ran (answered,
faulted after generating, or abandoned by its client), what a metered server bills; one entry
per generation request, in arrival order: `{"key", "path", "time", "body", "fault", "status", "session", "cookie"}`
where `session` is the X-Session-ID header (or null), `cookie` the Cookie header (or null), `key` is
the sha256 of the canonical JSON of `[messages or prompt, seed, max_tokens]`, `time` the arrival (unix
seconds), `fault` the index of the fault rule applied (or null), `status` the status sent (null while in
flight or when the connection was dropped). POST /_reset clears the log, counters and fault rules.

Fault rules (`FaultRule`; set at start with `faults=[...]`/`--faults JSON`, or at run time with POST /_faults
and a JSON list, which replaces the current rules). The first rule that matches a request and has uses left
applies; by default rules match the generation routes, `path` targets another (e.g. "/tokenize"), `match`
requires a substring of the request body. Examples:

    {"status": 429, "retry_after": 1, "times": 2}     two 429s with `Retry-After: 1`
    {"status": 503}                                   one 503 (times defaults to 1)
    {"drop_connection": true}                         close the socket without a response
    {"delay_s": 10}                                   answer 10 s late (a client read timeout)
    {"status": 400, "always": true, "match": "foo"}   every request mentioning foo fails with 400
    {"status": 200, "body": "<html></html>", "content_type": "text/html"}   not an OpenAI answer
    {"empty_output": true, "times": 2}                the model spends its budget on no text (usage reported)
    {"no_choices": true}                              usage reported, but no choice: not a usable completion

Use it in-process (a background thread) or as a subprocess (when a test kills processes):

    with serve_in_thread(ModelServerConfig(latency_ms=50)) as server:       # or serve_in_subprocess(...)
        backend = RemoteBackend(server.base_url)                             # http://127.0.0.1:PORT/v1
        server.set_faults([{"status": 503}]); server.requests(); server.reset()

    python -m tests.modelserver --port 8000 --latency-ms 200 --reasoning-style reasoning_content
    # prints "modelserver ready http://127.0.0.1:8000/v1" once it accepts connections
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import re
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Literal

import httpx2
import uvicorn
from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send
from tokenizers import Regex, Tokenizer, models, pre_tokenizers

ReasoningStyle = Literal["reasoning_content", "reasoning", "inline", "hidden"]

GENERATION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
AGGREGATION_MARKERS = ("Candidate 1", "Earlier attempt")
ARRIVED = "modelserver.arrived"  # the scope key for when a request reached the app (time.monotonic())
FAULT = "modelserver.fault"  # the scope key for the index of the fault rule applied to a request
READY_PREFIX = "modelserver ready "
STARTUP_TIMEOUT_S = 20.0
SHUTDOWN_TIMEOUT_S = 5.0
VOCAB_SIZE = 50_000
WORDS_PER_SENTENCE = 9
SENTENCES_PER_LINE = 3
_TOKEN = re.compile(r"<\|[a-z]+\|>|</?think>|\w+|[^\w\s]|\s+")
_ANSWER = re.compile(r"ANSWER=(\S+)")
_BOXED = re.compile(r"\\boxed\{([^{}]+)\}")
# A little non-ASCII so tails are exercised on multi-byte characters.
_WORDS = [
    "consider",
    "the",
    "sum",
    "of",
    "both",
    "terms",
    "modulo",
    "prime",
    "so",
    "we",
    "check",
    "each",
    "case",
    "again",
    "größe",
    "naïve",
    "数学",
    "therefore",
    "substituting",
    "gives",
    "factor",
    "square",
    "root",
    "bound",
    "equals",
    "then",
    "compare",
    "with",
    "earlier",
    "value",
]


class FaultRule(BaseModel):
    """One injected fault. See the module docstring for examples."""

    status: int | None = Field(default=None, description="Answer with this status (and an OpenAI error body).")
    retry_after: float | str | None = Field(default=None, description="Retry-After header: seconds or HTTP date.")
    message: str | None = Field(default=None, description="The error message; a default names the fault.")
    body: str | None = Field(default=None, description="A raw body instead of the JSON error.")
    content_type: str = "application/json"
    drop_connection: bool = Field(default=False, description="Close the socket without answering.")
    delay_s: float = Field(default=0.0, ge=0, description="Wait this long first (then fault or answer).")
    times: int = Field(default=1, ge=1, description="How many requests this rule applies to.")
    always: bool = Field(default=False, description="Apply to every matching request, ignoring `times`.")
    match: str | None = Field(default=None, description="Only requests whose body contains this substring.")
    path: str | None = Field(default=None, description="Only this path; default: the generation routes.")
    empty_output: bool = Field(default=False, description="Generate `max_tokens` tokens of nothing printable.")
    no_choices: bool = Field(default=False, description="Generate, report usage, but answer with no choices.")


class ModelServerConfig(BaseModel):
    """How the model server behaves. Every field is also a `--flag-name` of `python -m tests.modelserver`."""

    model_id: str = "toy"
    max_model_len: int = Field(default=32768, gt=0)
    reasoning_words: int = Field(default=64, ge=0, description="Words of reasoning before the answer.")
    reasoning_style: ReasoningStyle = "reasoning_content"
    p_correct: float = Field(default=0.6, ge=0, le=1, description="Chance a fresh request answers correctly.")
    latency_ms: float = Field(
        default=0.0,
        ge=0,
        description="Time from a generation request's arrival to its answer (the toy model's own work included).",
    )
    latency_per_token_ms: float = Field(default=0.0, ge=0, description="Extra latency per completion token.")
    usage: bool = Field(default=True, description="Report `usage`; off mimics servers that omit it.")
    api_key: str | None = Field(default=None, description="Require `Authorization: Bearer KEY`.")
    gzip: bool = Field(default=False, description="Compress answers for clients that accept gzip.")
    set_cookie: str | None = Field(default=None, description="A `Set-Cookie` header on every generation answer.")
    faults: list[FaultRule] = Field(default_factory=list)


# -- the toy model -----------------------------------------------------------------------------------------


def tokenize(text: str) -> list[str]:
    """The server's tokenizer: concatenating the pieces gives back `text`."""
    return _TOKEN.findall(text)


def write_tokenizer_json(path: Path) -> Path:
    """The server's tokenizer as a `tokenizer.json` (one token per regex piece, offsets included), what a user
    gives as RSA_TOKENIZER so tails are cut locally."""
    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(_TOKEN.pattern), behavior="isolated")
    tokenizer.save(str(path))
    return path


def render_chat(messages: list[dict[str, str]]) -> str:
    """The toy chat template, generation prompt included."""
    return "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages) + "<|assistant|>\n"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def request_key(body: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of [messages or prompt, seed, max_tokens]: one logical request."""
    content = body.get("messages", body.get("prompt"))
    canonical = json.dumps([content, body.get("seed"), body.get("max_tokens")], sort_keys=True)
    return _sha(canonical)


def problem_of(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if messages is None:
        return str(body.get("prompt", ""))
    return next((str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), "")


def correct_answer(problem: str) -> str:
    found = _ANSWER.search(problem)
    if found:
        return found.group(1)
    for marker in AGGREGATION_MARKERS:
        problem = problem.split(marker)[0]
    return str(int(_sha(problem.strip())[:8], 16) % 1000)


def wrong_answers(correct: str) -> list[str]:
    if correct.lstrip("-").isdigit():
        return [str(int(correct) + delta) for delta in (1, 2, 3)]
    return [f"{correct}{suffix}" for suffix in ("'", "+1", "-1")]


def choose_answer(problem: str, seed: int, p_correct: float) -> str:
    """Majority of the candidates' boxed answers for an aggregation prompt, else correct with p_correct."""
    for marker in AGGREGATION_MARKERS:
        if marker in problem:
            votes = _BOXED.findall(problem.split(marker, 1)[1])
            if votes:
                counts = Counter(votes)
                return max(counts, key=lambda answer: (counts[answer], -votes.index(answer)))
    rng = random.Random(f"{seed}:{_sha(problem)}")
    correct = correct_answer(problem)
    return correct if rng.random() < p_correct else rng.choice(wrong_answers(correct))


def reasoning_text(answer: str, words: int, rng: random.Random) -> str:
    sentences = []
    for start in range(0, words, WORDS_PER_SENTENCE):
        count = min(WORDS_PER_SENTENCE, words - start)
        sentence = " ".join(rng.choices(_WORDS, k=count))
        sentences.append(sentence[0].upper() + sentence[1:] + ".")
    lines = [" ".join(sentences[i : i + SENTENCES_PER_LINE]) for i in range(0, len(sentences), SENTENCES_PER_LINE)]
    return "\n".join([*lines, f"So the answer is \\boxed{{{answer}}}."])


def complete(body: dict[str, Any], config: ModelServerConfig) -> tuple[str, str, int]:
    """The raw completion (think tags inline) for a request, its finish reason and its tokens."""
    seed = int(body.get("seed") or 0)
    problem = problem_of(body)
    answer = choose_answer(problem, seed, config.p_correct)
    rng = random.Random(f"text:{seed}:{_sha(problem)}")
    reasoning = reasoning_text(answer, config.reasoning_words, rng)
    raw = f"<think>\n{reasoning}\n</think>\n\nThe final answer is \\boxed{{{answer}}}."
    stops = body.get("stop") or []
    cut = min((raw.find(s) for s in ([stops] if isinstance(stops, str) else stops) if s in raw), default=-1)
    if cut >= 0:
        raw = raw[:cut]
    pieces = tokenize(raw)
    max_tokens = int(body.get("max_tokens") or 16)
    if len(pieces) > max_tokens:
        return "".join(pieces[:max_tokens]), "length", max_tokens
    return raw, "stop", len(pieces)


def split_raw(raw: str) -> tuple[str, str]:
    """(reasoning, answer) of a raw completion."""
    inner = raw.removeprefix("<think>")
    reasoning, closed, answer = inner.partition("</think>")
    return reasoning.strip(), answer.strip() if closed else ""


# -- state and HTTP ----------------------------------------------------------------------------------------


def _error_body(status: int, message: str) -> dict[str, Any]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "code": status}}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(_error_body(status, message), status_code=status, headers=headers)


class ServerState:
    """Everything the server remembers; touched only from its event loop."""

    def __init__(self, config: ModelServerConfig) -> None:
        self.config = config
        self.reset()
        self.set_faults(config.faults)

    def reset(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.faults: list[tuple[FaultRule, int]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.tokenize_calls = 0
        self.spent = {"prompt_tokens": 0, "completion_tokens": 0}

    def spend(self, usage: dict[str, int]) -> None:
        for name in self.spent:
            self.spent[name] += usage[name]

    def set_faults(self, rules: list[FaultRule]) -> None:
        self.faults = [(rule, rule.times) for rule in rules]

    def fault_of(self, scope: Scope) -> FaultRule | None:
        """The rule `FaultsAndLog` applied to this request, if any."""
        index = scope.get(FAULT)
        return None if index is None else self.faults[index][0]

    def take_fault(self, path: str, raw_body: str) -> int | None:
        """Index of the first rule that applies to this request (spending one of its uses), or None."""
        for index, (rule, left) in enumerate(self.faults):
            on_path = path == rule.path if rule.path else path in GENERATION_PATHS
            if on_path and (rule.always or left > 0) and (rule.match is None or rule.match in raw_body):
                self.faults[index] = (rule, left - 1)
                return index
        return None


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _sleep_unless_disconnected(seconds: float, receive: Receive) -> bool:
    """Sleep; return False early if the client hung up (so a long fault delay never outlives its client)."""

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait_for(asyncio.shield(watcher), seconds)
    except TimeoutError:
        return True
    finally:
        watcher.cancel()
    return False


async def _drop_connection(receive: Receive) -> None:
    """Close the socket without a response. Reaches uvicorn's transport through its bound `receive`."""
    transport = getattr(getattr(receive, "__self__", None), "transport", None)
    if transport is None:
        raise ConnectionAbortedError("modelserver: fault rule drops the connection")
    transport.close()
    # Wait until uvicorn notices, so it does not try to send a 500 on a closed socket.
    while (await receive())["type"] != "http.disconnect":
        pass


class FaultsAndLog:
    """ASGI middleware: checks the API key, logs generation requests, counts those in flight, applies faults."""

    def __init__(self, app: Starlette, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path.startswith("/_"):
            await self.app(scope, receive, send)
            return
        scope[ARRIVED] = time.monotonic()
        state = self.state
        key = state.config.api_key
        if key is not None and Headers(scope=scope).get("authorization") != f"Bearer {key}":
            await _error(401, "Invalid API key")(scope, receive, send)
            return
        body = await _read_body(receive)
        fault_index = state.take_fault(path, body.decode(errors="replace"))
        scope[FAULT] = fault_index
        entry: dict[str, Any] | None = None
        if path in GENERATION_PATHS:
            parsed = _json_or_empty(body)
            key = request_key(parsed)
            session = Headers(scope=scope).get("x-session-id")
            entry = {"key": key, "path": path, "time": time.time(), "body": parsed, "fault": fault_index}
            entry["session"] = session
            entry["cookie"] = Headers(scope=scope).get("cookie")
            entry["status"] = None
            state.requests.append(entry)
        state.in_flight += entry is not None
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            await self._respond(scope, receive, send, body, fault_index, entry)
        finally:
            state.in_flight -= entry is not None

    async def _respond(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        body: bytes,
        fault_index: int | None,
        entry: dict[str, Any] | None,
    ) -> None:
        async def send_logged(message: Message) -> None:
            if entry is not None and message["type"] == "http.response.start":
                entry["status"] = message["status"]
            await send(message)

        rule = None if fault_index is None else self.state.faults[fault_index][0]
        if rule is not None:
            if rule.delay_s and not await _sleep_unless_disconnected(rule.delay_s, receive):
                return
            if rule.drop_connection:
                await _drop_connection(receive)
                return
            if rule.status is not None or rule.body is not None:
                await _fault_response(rule)(scope, receive, send_logged)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send_logged)


def _json_or_empty(body: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(body or b"{}")
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _fault_response(rule: FaultRule) -> Response:
    status = rule.status or 200
    after = rule.retry_after
    if isinstance(after, float) and after.is_integer():
        after = int(after)  # HTTP wants delta-seconds as an integer
    headers = {"Retry-After": str(after)} if after is not None else None
    if rule.body is not None:
        return Response(rule.body, status_code=status, media_type=rule.content_type, headers=headers)
    return _error(status, rule.message or f"modelserver: injected fault {status}", headers)


def completion_response(body: dict[str, Any], config: ModelServerConfig, *, chat: bool) -> tuple[int, dict]:
    """(status, JSON body) of a generation request, before any latency: the whole toy model in one call."""
    if body.get("n", 1) != 1:
        return 400, _error_body(400, "modelserver: n > 1 is not supported; send separate requests")
    prompt_text = render_chat(body.get("messages", [])) if chat else str(body.get("prompt", ""))
    prompt_tokens = len(tokenize(prompt_text))
    max_tokens = int(body.get("max_tokens") or 16)
    if prompt_tokens + max_tokens > config.max_model_len:
        message = (
            f"This model's maximum context length is {config.max_model_len} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the "
            "completion). Please reduce the length of the messages or completion."
        )
        return 400, _error_body(400, message)
    raw, finish, completion_tokens = complete(body, config)
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
    if chat:
        choice["message"] = _message(raw, config.reasoning_style)
    else:
        choice["text"] = raw
    answer: dict[str, Any] = {
        "id": f"cmpl-{request_key(body)[:12]}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": config.model_id,
        "choices": [choice],
    }
    answer["usage"] = _usage(prompt_tokens, completion_tokens)
    return 200, answer


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    total = prompt_tokens + completion_tokens
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total}


def _faulted_answer(answer: dict[str, Any], body: dict[str, Any], rule: FaultRule | None) -> dict[str, Any]:
    """A generated answer as an `empty_output` or `no_choices` rule changes it (usage reported either way)."""
    if rule is None or not (rule.empty_output or rule.no_choices):
        return answer
    usage = answer["usage"]
    if rule.no_choices:
        return answer | {"choices": []}
    spent = int(body.get("max_tokens") or 16)
    [choice] = answer["choices"]
    emptied = {"message": {"role": "assistant", "content": ""}} if "message" in choice else {"text": ""}
    return answer | {
        "choices": [choice | emptied | {"finish_reason": "length"}],
        "usage": _usage(usage["prompt_tokens"], spent),
    }


def build_app(config: ModelServerConfig | None = None) -> FaultsAndLog:
    """The ASGI app of a model server with `config`."""
    state = ServerState(config or ModelServerConfig())
    cfg = state.config

    async def models(request: Request) -> Response:
        model = {"id": cfg.model_id, "object": "model", "owned_by": "modelserver"}
        return JSONResponse({"object": "list", "data": [model | {"max_model_len": cfg.max_model_len}]})

    async def generate(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:  # a client killed mid-send leaves half a body behind
            return _error(400, "modelserver: the request body is not JSON")
        status, answer = completion_response(body, cfg, chat=request.url.path.endswith("/chat/completions"))
        if status == 200:
            answer = _faulted_answer(answer, body, state.fault_of(request.scope))
            state.spend(answer["usage"])
            if not cfg.usage:
                del answer["usage"]
            tokens = answer.get("usage", {}).get("completion_tokens", 0)
            latency_s = (cfg.latency_ms + cfg.latency_per_token_ms * tokens) / 1000
            arrived = request.scope.get(ARRIVED, time.monotonic())
            await asyncio.sleep(max(0.0, arrived + latency_s - time.monotonic()))
        cookie = {"set-cookie": cfg.set_cookie} if cfg.set_cookie else None
        return JSONResponse(answer, status_code=status, headers=cookie)

    async def tokenize_route(request: Request) -> Response:
        state.tokenize_calls += 1
        body = await request.json()
        if "messages" not in body and "prompt" not in body:
            return _error(400, "modelserver: /tokenize needs `prompt` or `messages`")
        text = render_chat(body["messages"]) if "messages" in body else str(body["prompt"])
        ids = [zlib.crc32(piece.encode()) % VOCAB_SIZE for piece in tokenize(text)]
        return JSONResponse({"count": len(ids), "tokens": ids, "max_model_len": cfg.max_model_len})

    async def requests_route(request: Request) -> Response:
        counters = {"in_flight": state.in_flight, "max_in_flight": state.max_in_flight, "spent": state.spent}
        return JSONResponse({"requests": state.requests, "tokenize_calls": state.tokenize_calls, **counters})

    async def reset_route(request: Request) -> Response:
        state.reset()
        return JSONResponse({"ok": True})

    async def faults_route(request: Request) -> Response:
        if request.method == "POST":
            state.set_faults([FaultRule.model_validate(rule) for rule in await request.json()])
        return JSONResponse([rule.model_dump(exclude_defaults=True) | {"left": n} for rule, n in state.faults])

    app = Starlette(
        routes=[
            Route("/v1/models", models),
            Route("/v1/chat/completions", generate, methods=["POST"]),
            Route("/v1/completions", generate, methods=["POST"]),
            Route("/tokenize", tokenize_route, methods=["POST"]),
            Route("/_requests", requests_route),
            Route("/_reset", reset_route, methods=["POST"]),
            Route("/_faults", faults_route, methods=["GET", "POST"]),
        ],
        middleware=[Middleware(GZipMiddleware, minimum_size=0)] if cfg.gzip else [],
    )
    return FaultsAndLog(app, state)


def _message(raw: str, style: ReasoningStyle) -> dict[str, Any]:
    reasoning, answer = split_raw(raw)
    if style == "inline":
        return {"role": "assistant", "content": raw}
    message: dict[str, Any] = {"role": "assistant", "content": answer or None}
    if style != "hidden":
        message[style] = reasoning
    return message


# -- running it --------------------------------------------------------------------------------------------


class ModelServerHandle:
    """A running model server: its URLs, and the control routes as plain (blocking) calls."""

    def __init__(self, root_url: str, process: subprocess.Popen[str] | None = None) -> None:
        self.root_url = root_url
        self.base_url = root_url + "/v1"
        self.process = process

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        response = httpx2.request(method, self.root_url + path, json=payload, timeout=10.0)
        response.raise_for_status()
        return response.json()

    def log(self) -> dict[str, Any]:
        """The whole GET /_requests answer (requests plus in-flight counters)."""
        return self._call("GET", "/_requests")

    def requests(self) -> list[dict[str, Any]]:
        return self.log()["requests"]

    def spent(self) -> dict[str, int]:
        """Tokens the model spent on every generation since the last reset: `{"prompt_tokens", ...}`."""
        return self.log()["spent"]

    def set_faults(self, rules: list[dict[str, Any]]) -> None:
        self._call("POST", "/_faults", rules)

    def reset(self) -> None:
        self._call("POST", "/_reset")


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit this. asyncio sets it only on connections it accepts on sockets it created, so a
    # pre-bound socket handed to uvicorn otherwise answers every request about 40 ms late (Nagle + delayed ACK).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    return sock


class _Server(uvicorn.Server):
    """uvicorn, calling `on_ready` once it accepts connections (uvicorn has no event for that)."""

    def __init__(self, config: ModelServerConfig, on_ready: Callable[[], None]) -> None:
        super().__init__(_uvicorn_config(config))
        self.on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.on_ready()


def _uvicorn_config(config: ModelServerConfig) -> uvicorn.Config:
    return uvicorn.Config(
        build_app(config),
        log_level="warning",
        lifespan="off",
        ws="none",
        timeout_graceful_shutdown=1,
    )


@contextmanager
def serve_in_thread(config: ModelServerConfig | None = None, host: str = "127.0.0.1") -> Iterator[ModelServerHandle]:
    """Run a model server on a free port in a background thread (own event loop) for the `with` block."""
    sock = _bind(host, 0)
    ready = threading.Event()
    server = _Server(config or ModelServerConfig(), ready.set)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="modelserver", daemon=True)
    thread.start()
    try:
        if not ready.wait(STARTUP_TIMEOUT_S):
            raise RuntimeError("modelserver: the server thread did not start")
        yield ModelServerHandle(f"http://{host}:{sock.getsockname()[1]}")
    finally:
        server.should_exit = True
        thread.join(SHUTDOWN_TIMEOUT_S)
        sock.close()


def config_argv(config: ModelServerConfig) -> list[str]:
    """Command-line flags reproducing `config` (only the fields that differ from the defaults)."""
    argv = []
    for name, value in config.model_dump(exclude_defaults=True).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else flag.replace("--", "--no-", 1))
        else:
            argv += [flag, json.dumps(value) if name == "faults" else str(value)]
    return argv


@contextmanager
def serve_in_subprocess(
    config: ModelServerConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> Iterator[ModelServerHandle]:
    """Run a model server as `python -m tests.modelserver` on `port` (0: a free one; a given port brings a killed
    server back where it was); `handle.process` is the Popen."""
    argv = [sys.executable, "-m", "tests.modelserver", "--host", host, "--port", str(port)]
    argv += config_argv(config or ModelServerConfig())
    repo = Path(__file__).resolve().parents[1]
    process = subprocess.Popen(argv, cwd=repo, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith(READY_PREFIX):
            raise RuntimeError(f"modelserver: subprocess did not start (exit {process.poll()}): {line!r}")
        yield ModelServerHandle(line[len(READY_PREFIX) :].strip().removesuffix("/v1"), process)
    finally:
        process.terminate()
        try:
            process.wait(SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _parse_args(argv: list[str] | None) -> tuple[ModelServerConfig, str, int]:
    parser = argparse.ArgumentParser(prog="python -m tests.modelserver", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    for name, field in ModelServerConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=field.description)
        else:
            kind = json.loads if name == "faults" else str
            parser.add_argument(flag, type=kind, default=None, help=field.description)
    args = vars(parser.parse_args(argv))
    host, port = args.pop("host"), args.pop("port")
    config = ModelServerConfig.model_validate({k: v for k, v in args.items() if v is not None})
    return config, host, port


async def _serve(config: ModelServerConfig, host: str, port: int) -> None:
    sock = _bind(host, port)
    url = f"http://{host}:{sock.getsockname()[1]}/v1"
    await _Server(config, lambda: print(READY_PREFIX + url, flush=True)).serve(sockets=[sock])


def main(argv: list[str] | None = None) -> None:
    config, host, port = _parse_args(argv)
    with suppress(KeyboardInterrupt):
        asyncio.run(_serve(config, host, port))


if __name__ == "__main__":
    main()
