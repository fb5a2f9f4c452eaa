"""config.json of a ZAYA1 checkpoint, validated at the boundary so the model code can trust every number.

Values the engine does not implement are rejected here with the field name and the expected value, rather than
producing a model that silently computes something else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rsa_service.backends.engine.errors import CheckpointFileError, UnsupportedConfigError

CONFIG_FILE = "config.json"
DEFAULT_ROPE_THETA = 5_000_000.0
DEFAULT_PARTIAL_ROTARY_FACTOR = 0.5


class RopeSettings(BaseModel):
    """RoPE of the attention layers: plain ("default") rotary embedding on the leading part of each head."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    rope_type: Literal["default"] = "default"
    rope_theta: float = Field(default=DEFAULT_ROPE_THETA, gt=0)
    partial_rotary_factor: float = Field(default=DEFAULT_PARTIAL_ROTARY_FACTOR, gt=0, le=1)


class ZayaConfig(BaseModel):
    """The fields of config.json the engine reads; everything else in the file is ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    model_type: Literal["zaya"] = "zaya"
    vocab_size: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    num_hidden_layers: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    num_key_value_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    moe_intermediate_size: int = Field(gt=0)
    num_experts: int = Field(gt=0)
    num_experts_per_tok: Literal[1] = 1
    router_hidden_size: int = Field(gt=0)
    cca_time0: int = Field(default=2, ge=1)
    cca_time1: int = Field(default=2, ge=1)
    rms_norm_eps: float = Field(default=1e-5, gt=0)
    max_position_embeddings: int = Field(default=131072, gt=0)
    hidden_act: Literal["silu"] = "silu"
    attention_bias: Literal[False] = False
    lm_head_bias: Literal[False] = False
    tie_word_embeddings: bool = True
    layer_types: list[Literal["hybrid"]] | None = None
    rope: RopeSettings = RopeSettings()
    pad_token_id: int | None = 0
    bos_token_id: int | None = 2
    eos_token_id: int | list[int] | None = 106

    @model_validator(mode="before")
    @classmethod
    def _gather_rope(cls, data: Any) -> Any:
        """Published configs nest RoPE per layer type ({"hybrid": {...}}), sometimes beside a stray flat key."""
        if not isinstance(data, dict):
            return data
        params = data.get("rope_parameters")
        if isinstance(params, dict) and isinstance(params.get("hybrid"), dict):
            params = params["hybrid"]
        rope = dict(params) if isinstance(params, dict) else {}
        if "rope_theta" in data and "rope_theta" not in rope:
            rope["rope_theta"] = data["rope_theta"]
        return {**data, "rope": rope}

    @model_validator(mode="after")
    def _check_shapes(self) -> ZayaConfig:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} must be a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.rotary_dim % 2:
            raise ValueError(
                f"head_dim={self.head_dim} × partial_rotary_factor={self.rope.partial_rotary_factor} must give an "
                "even number of rotary dimensions"
            )
        if (self.num_key_value_heads * self.head_dim) % 2:
            raise ValueError("num_key_value_heads × head_dim must be even (values are split current/delayed)")
        if self.layer_types is not None and len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries, expected {self.num_hidden_layers}")
        return self

    @property
    def rope_theta(self) -> float:
        return self.rope.rope_theta

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rope.partial_rotary_factor)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        return (self.eos_token_id,) if isinstance(self.eos_token_id, int) else tuple(self.eos_token_id)

    @classmethod
    def from_checkpoint(cls, directory: Path) -> ZayaConfig:
        """Read and validate `directory/config.json`, naming the file and field in any error."""
        path = directory / CONFIG_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise CheckpointFileError(f"{path}: missing; a ZAYA1 checkpoint directory needs config.json") from exc
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointFileError(f"{path}: unreadable JSON: {exc}") from exc
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise UnsupportedConfigError(f"{path}: {_describe(exc)}") from exc


class ZayaDims(Protocol):
    """The config values the model reads (satisfied by the validated `ZayaConfig`)."""

    @property
    def vocab_size(self) -> int: ...
    @property
    def hidden_size(self) -> int: ...
    @property
    def num_hidden_layers(self) -> int: ...
    @property
    def num_attention_heads(self) -> int: ...
    @property
    def num_key_value_heads(self) -> int: ...
    @property
    def head_dim(self) -> int: ...
    @property
    def moe_intermediate_size(self) -> int: ...
    @property
    def num_experts(self) -> int: ...
    @property
    def router_hidden_size(self) -> int: ...
    @property
    def cca_time0(self) -> int: ...
    @property
    def cca_time1(self) -> int: ...
    @property
    def rms_norm_eps(self) -> float: ...
    @property
    def tie_word_embeddings(self) -> bool: ...
    @property
    def rope_theta(self) -> float: ...
    @property
    def rotary_dim(self) -> int: ...


def conv_state_width(dims: ZayaDims) -> int:
    """Past columns the two stacked causal convolutions need: (t0 - 1) + (t1 - 1)."""
    return dims.cca_time0 - 1 + dims.cca_time1 - 1


def _describe(exc: ValidationError) -> str:
    """One line per problem: `field=value: what was expected`."""
    parts = []
    for error in exc.errors(include_url=False):
        field = ".".join(str(p) for p in error["loc"])
        if field:
            parts.append(f"{field}={error.get('input')!r} is not supported: {error['msg']}")
        else:
            parts.append(error["msg"].removeprefix("Value error, "))
    return "; ".join(parts)
