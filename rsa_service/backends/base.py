"""The Backend protocol: the seam that makes the model pluggable.

A backend turns one rendered request into one completion and measures tokens with the model's own tokenizer.
It never sees Redis or job state; the runner never sees HTTP or torch. Errors cross the seam as the small tree
below, so the runner can tell "retry this" from "this failed" without knowing the transport.

    BackendError
    ├── TransientBackendError      retried by the backend itself; surfaces only once retries are spent
    ├── PermanentBackendError      a request the server will never accept (400/401/403/404/422)
    │   └── ContextLengthError     |prompt| + max_tokens does not fit the model's context
    └── BackendUnavailableError    the backend cannot be reached or does not speak the protocol
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from rsa_service.core.conversation import ChatMessage as ChatMessage  # re-exported: part of the Backend protocol
from rsa_service.core.steps import Usage as Usage  # re-exported: part of the Backend protocol
from rsa_service.core.tails import Tail

FinishReason = Literal["stop", "length", "cancelled", "error"]

# A torch device, or `auto` for the best one present (the engine resolves it when it loads).
DEVICE_PATTERN = r"^(auto|cpu|mps|(cuda|xpu)(:\d+)?)$"


class GenerationRequest(BaseModel):
    """One completion to produce. Exactly one of `messages` (chat) or `prompt` (plain text) is set."""

    model_config = ConfigDict(frozen=True)

    messages: tuple[ChatMessage, ...] | None = None
    prompt: str | None = None
    max_tokens: int = Field(gt=0)
    temperature: float = Field(default=1.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, gt=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    seed: int | None = None
    stop: tuple[str, ...] = ()
    lineage: str | None = Field(
        default=None,
        description="A stable id shared by requests of one trace lineage (their prompts share a prefix): a replica "
        "fleet keeps them on one replica, and routers read it from the session header.",
    )


class Generation(BaseModel):
    """A finished completion, with the reasoning already separated from the answer."""

    model_config = ConfigDict(frozen=True)

    text: str
    reasoning: str = ""
    finish_reason: FinishReason
    usage: Usage
    retry_usage: Usage = Field(
        default_factory=Usage, description="Spent by the backend's own failed attempts before this answer."
    )

    @property
    def spent(self) -> Usage:
        """Everything this call cost: the answer and the attempts retried before it."""
        return self.usage + self.retry_usage


class BackendOptions(BaseModel):
    """Everything a backend factory may need besides its location. Each backend reads the fields it uses."""

    model_config = ConfigDict(frozen=True)

    model: str | None = Field(default=None, description="Model name sent to the server (remote) or reported.")
    api_key: str | None = Field(default=None, repr=False)
    tokenizer_path: str | None = Field(default=None, description="A local tokenizer.json for exact token counts.")
    max_concurrency: int = Field(default=64, gt=0, description="Requests or sequences in flight at once.")
    requests_per_s: float | None = Field(default=None, gt=0, description="Client-side rate limit.")
    connect_timeout_s: float = Field(default=10.0, gt=0)
    read_timeout_s: float = Field(default=1800.0, gt=0, description="Long: a 40K-token rollout takes minutes.")
    max_retries: int = Field(default=6, ge=0)
    retry_backoff_s: float = Field(default=0.5, gt=0, description="First backoff wait; doubles per retry, jittered.")
    retry_max_wait_s: float = Field(default=30.0, gt=0, description="Cap on one wait, Retry-After included.")
    session_header: str = Field(
        default="X-Session-ID",
        pattern=r"^[A-Za-z0-9-]+$",
        description="Remote: the header carrying a request's lineage id, for routers that keep a session on one "
        "replica (prefix-cache reuse).",
    )
    dtype: Literal["auto", "bfloat16", "float32"] = Field(
        default="auto", description="In-process engine weights; auto: the checkpoint's own dtype."
    )
    quantize: Literal["none", "int8"] = Field(
        default="none", description="In-process engine: int8 stores the weights a decode step streams as int8."
    )
    device: str = Field(
        default="auto", pattern=DEVICE_PATTERN, description="In-process engine: auto picks CUDA where present."
    )
    threads: int | None = Field(
        default=None, gt=0, description="In-process engine: torch threads (default: every core but one)."
    )
    compile: bool | None = Field(
        default=None, description="In-process engine: compile the decode step; None: where it pays."
    )


class Capabilities(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str
    context_length: int | None = None
    separate_reasoning: bool = False
    exact_tokenizer: bool = False


@runtime_checkable
class Backend(Protocol):
    """What the runner needs from a model. Implementations must be safe to call concurrently."""

    async def generate(self, request: GenerationRequest) -> Generation: ...

    async def count_tokens(self, request: GenerationRequest) -> int:
        """Tokens the rendered prompt of `request` occupies (chat template included)."""
        ...

    async def tail(self, text: str, max_tokens: int, *, tokens_hint: int | None = None) -> Tail:
        """The last `max_tokens` tokens of `text`, cut at a clean boundary (see `core.tails`).

        `tokens_hint` estimates the tokens of `text` (the runner derives it from the generation's usage); a
        backend that can only count whole texts may start its search from it instead of counting `text` first.
        """
        ...

    async def capabilities(self) -> Capabilities: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Probed(Protocol):
    """A backend that can say whether its model server answers right now (readiness), apart from `capabilities`,
    which may be remembered from an earlier answer."""

    async def probe(self) -> None:
        """Return when the server answers now; raise BackendError otherwise. Never cached, never retried."""
        ...


class BackendError(Exception):
    """Base of every error a backend raises. `usage` is what the failed call still cost (a server may report
    usage and the answer still be unusable; an aborted request counts an upper bound), zero when nothing ran."""

    def __init__(self, message: str, *, usage: Usage | None = None) -> None:
        super().__init__(message)
        self.usage = usage or Usage()


class TransientBackendError(BackendError):
    """Worth retrying later: timeouts, dropped connections, 408/409/429/5xx."""

    def __init__(self, message: str, *, retry_after_s: float | None = None, usage: Usage | None = None) -> None:
        super().__init__(message, usage=usage)
        self.retry_after_s = retry_after_s


class PermanentBackendError(BackendError):
    """The same request will fail again; retrying wastes budget."""


class ContextLengthError(PermanentBackendError):
    """The prompt plus the generation budget exceeds the model's context window. The sizes are set when known
    (the pre-flight check knows them; a server's refusal may not say)."""

    def __init__(
        self,
        message: str,
        *,
        prompt_tokens: int | None = None,
        max_tokens: int | None = None,
        context_length: int | None = None,
    ) -> None:
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.context_length = context_length


class BackendUnavailableError(BackendError):
    """The backend cannot be reached, or answers in a way that is not the expected protocol."""


# Special tokens a chat template adds around one message, at most (role markers, separators).
TEMPLATE_TOKENS_PER_MESSAGE = 8


async def aborted_usage(backend: Backend, request: GenerationRequest) -> Usage:
    """What an aborted request may have cost (see `Usage.upper_bound`): its prompt as the backend counts it and
    its whole budget. When the backend cannot count now, the prompt's UTF-8 bytes plus a template allowance per
    message bound it, since a byte-level tokenizer never makes more tokens than bytes."""
    try:
        prompt = await backend.count_tokens(request)
    except BackendError:
        texts = [m.content for m in request.messages] if request.messages is not None else [request.prompt or ""]
        prompt = sum(len(text.encode()) + TEMPLATE_TOKENS_PER_MESSAGE for text in texts)
    return Usage.upper_bound(prompt, request.max_tokens)


async def probe_backend(backend: Backend) -> None:
    """Readiness of any backend: its `probe` when it has one, else its capabilities (an in-process engine)."""
    if isinstance(backend, Probed):
        await backend.probe()
    else:
        await backend.capabilities()
