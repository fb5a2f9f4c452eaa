"""A conversation as a job keeps it: what round 0 sends and what every aggregation prompt carries.

A chat (or a Responses API input) is a list of messages whose last user message is the problem RSA works on.
Round 0 sends the whole conversation, so a system prompt and earlier turns shape every first trace; an
aggregation prompt is a new user message (the templates over the problem and K tails) under the conversation's
system messages only, since earlier turns would crowd the K tails the Markovian bound leaves room for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict

Role = Literal["system", "user", "assistant"]
# Roles other APIs use, as the roles a chat template knows. `developer` is OpenAI's newer name for `system`.
ROLE_ALIASES: dict[str, Role] = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class ChatMessage(BaseModel):
    model_config = ConfigDict(frozen=True)

    role: Role
    content: str


Conversation = tuple[ChatMessage, ...]


def conversation_from(messages: Sequence[tuple[str, str]]) -> Conversation:
    """(role, text) pairs as a conversation; ValueError naming `messages` for a role no chat template knows, or
    when no user message with text ends the problem."""
    turns = []
    for index, (role, text) in enumerate(messages):
        if role not in ROLE_ALIASES:
            known = ", ".join(ROLE_ALIASES)
            raise ValueError(f"messages[{index}].role: {role!r} cannot be part of an RSA job (use {known})")
        turns.append(ChatMessage(role=ROLE_ALIASES[role], content=text))
    problem_of(turns)
    return tuple(turns)


def problem_of(conversation: Sequence[ChatMessage]) -> str:
    """The last user message: the problem the templates show."""
    users = [message.content for message in conversation if message.role == "user"]
    if not users or not users[-1].strip():
        raise ValueError("messages: needs a user message with text: it is the problem RSA works on")
    return users[-1]


def initial_messages(conversation: Conversation, problem: str) -> Conversation:
    """Round 0: the whole conversation, or the problem alone when the job has none."""
    return conversation or (ChatMessage(role="user", content=problem),)


def aggregation_messages(conversation: Conversation, content: str) -> Conversation:
    """An aggregation or refinement prompt `content` under the conversation's system messages."""
    system = tuple(message for message in conversation if message.role == "system")
    return (*system, ChatMessage(role="user", content=content))
