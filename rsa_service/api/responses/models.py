"""The Responses API's wire models: the create body as OpenAI clients send it, the request kept with the job, and the
response object, its output items and input items in OpenAI's shapes (each parses into `openai.types.responses`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Effort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]
CompletionWindow = Literal["soonest", "2h", "8h"]
ResponseStatus = Literal["queued", "in_progress", "completed", "failed", "cancelled", "incomplete"]
ItemStatus = Literal["in_progress", "completed", "incomplete"]
Role = Literal["user", "system", "developer", "assistant"]
Metadata = Annotated[
    dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]],
    Field(max_length=16, description="Up to 16 string pairs (keys up to 64, values up to 512 characters)."),
]


class ContentPart(BaseModel):
    """Text in a message: `input_text` in user, system and developer turns, `output_text` in assistant turns."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["input_text", "output_text"]
    text: str


class InputMessage(BaseModel):
    """One turn of the input; the last user turn is the problem RSA works on, earlier turns are its context."""

    model_config = ConfigDict(extra="ignore")  # `id` and `status` of an item echoed back from a listing

    type: Literal["message"] = "message"
    role: Role
    content: str | list[ContentPart]

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ReasoningOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    effort: Effort | None = Field(default=None, description="An RSA preset of N, K and T (see the README).")
    summary: Literal["auto", "concise", "detailed"] | None = None


class BackgroundOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    completion_window: CompletionWindow = Field(
        default="soonest", description="`2h` and `8h` queue the job behind interactive work (background priority)."
    )
    continuation_id: str | None = Field(default=None, max_length=256)


class ResponseCreate(BaseModel):
    """The body of POST /v1/responses. Fields OpenAI defines for tools, prompt caching and conversations that have
    no meaning here are accepted when they ask for nothing (e.g. `tools: []`), and refused otherwise."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256, description="A configured backend name or an operator alias.")
    input: str | list[InputMessage] = Field(description="The problem, or message items with the context it needs.")
    instructions: str | None = Field(default=None, description="A system message ahead of the input.")
    max_output_tokens: int | None = Field(default=None, gt=0, description="Budget of every generation's output.")
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    metadata: Metadata | None = None
    background: bool | None = False
    background_options: BackgroundOptions | None = None
    stream: bool | None = False
    reasoning: ReasoningOptions | None = None
    rsa: dict[str, Any] | None = Field(default=None, description="RSA settings: population, subset, rounds, ...")
    store: bool | None = None
    include: list[str] | None = None
    text: dict[str, Any] | None = None
    tool_choice: Literal["none", "auto"] | None = None
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=0, description="Tools are not supported.")
    parallel_tool_calls: bool | None = None
    truncation: Literal["auto", "disabled"] | None = None
    user: str | None = Field(default=None, max_length=256)
    safety_identifier: str | None = Field(default=None, max_length=256)
    prompt_cache_key: str | None = Field(default=None, max_length=256)
    service_tier: str | None = Field(default=None, max_length=64)
    stream_options: dict[str, Any] | None = None

    @property
    def completion_window(self) -> CompletionWindow:
        return self.background_options.completion_window if self.background_options else "soonest"


class StoredRequest(BaseModel):
    """What a response shows of its request, kept in the job hash beside the spec (`response` field)."""

    model: str
    input: list[InputMessage]
    instructions: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    background: bool = False
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    reasoning: ReasoningOptions | None = None


# ---- the response object ------------------------------------------------------------------------------------


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[dict[str, Any]] = Field(default_factory=list)
    logprobs: list[dict[str, Any]] = Field(default_factory=list)


class SummaryText(BaseModel):
    type: Literal["summary_text"] = "summary_text"
    text: str


class ReasoningText(BaseModel):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


class ReasoningItem(BaseModel):
    """A summary of the rounds (answers held, agreement, tokens); the raw traces are at /v1/jobs/{id}/steps."""

    id: str
    type: Literal["reasoning"] = "reasoning"
    summary: list[SummaryText]
    status: ItemStatus


class MessageItem(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: ItemStatus
    content: list[OutputText]


OutputItem = Annotated[ReasoningItem | MessageItem, Field(discriminator="type")]


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = Field(description="Output of every generation but the one whose text is the message.")


class ResponseUsage(BaseModel):
    """Every generation of the job, as the job counts them (prompts as input, completions as output)."""

    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class ResponseError(BaseModel):
    code: Literal["server_error", "rate_limit_exceeded", "invalid_prompt"]
    message: str


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class TextFormat(BaseModel):
    type: Literal["text"] = "text"


class TextConfig(BaseModel):
    format: TextFormat = Field(default_factory=TextFormat)


class RSAInfo(BaseModel):
    """Where to see the rest: the job behind the response (GET /v1/jobs/{job_id}, its steps and events)."""

    job_id: str
    answer: str | None = None
    stopped_reason: str | None = None


class ResponseObject(BaseModel):
    """A response: a job seen through OpenAI's resource."""

    id: str
    object: Literal["response"] = "response"
    created_at: int = Field(description="Unix seconds.")
    completed_at: int | None = None
    status: ResponseStatus
    model: str
    output: list[OutputItem]
    usage: ResponseUsage | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    background: bool = False
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    reasoning: ReasoningOptions | None = None
    text: TextConfig = Field(default_factory=TextConfig)
    parallel_tool_calls: bool = False
    tool_choice: Literal["none"] = "none"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    rsa: RSAInfo


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response.deleted"] = "response.deleted"
    deleted: bool = True


class ListedPart(BaseModel):
    type: Literal["input_text", "output_text"]
    text: str
    annotations: list[dict[str, Any]] | None = None


class ListedItem(BaseModel):
    """An input message as GET /v1/responses/{id}/input_items lists it."""

    id: str
    type: Literal["message"] = "message"
    role: Role
    status: ItemStatus = "completed"
    content: list[ListedPart]


class InputItemPage(BaseModel):
    object: Literal["list"] = "list"
    data: list[ListedItem]
    first_id: str | None
    last_id: str | None
    has_more: bool
