"""The algorithm as pure logic, no I/O: parameters and limits, the seeded subset plan, tails, prompt rendering,
answer extraction and voting, per-round statistics, the conversation a job keeps. Imports nothing else of the
package."""

from rsa_service.core.answers import cluster, equivalent, extract_boxed, majority
from rsa_service.core.conversation import (
    ChatMessage,
    Conversation,
    aggregation_messages,
    conversation_from,
    initial_messages,
    problem_of,
)
from rsa_service.core.params import Limits, RSAParams, check_problem
from rsa_service.core.plan import choose_candidates, choose_member, choose_subset, generation_seed
from rsa_service.core.prompts import PromptTemplates, default_prompt_dir
from rsa_service.core.reasoning import TailSource, split_reasoning, tail_source_text
from rsa_service.core.steps import RoundStats, StepResult, Usage, round_stats, step_key
from rsa_service.core.summary import Summary, select_answer, summarise
from rsa_service.core.tails import Tail, fitting_tail

__all__ = [
    "ChatMessage",
    "Conversation",
    "Limits",
    "PromptTemplates",
    "RSAParams",
    "RoundStats",
    "StepResult",
    "Summary",
    "Tail",
    "TailSource",
    "Usage",
    "aggregation_messages",
    "check_problem",
    "choose_candidates",
    "choose_member",
    "choose_subset",
    "cluster",
    "conversation_from",
    "default_prompt_dir",
    "equivalent",
    "extract_boxed",
    "fitting_tail",
    "generation_seed",
    "initial_messages",
    "majority",
    "problem_of",
    "round_stats",
    "select_answer",
    "split_reasoning",
    "step_key",
    "summarise",
    "tail_source_text",
]
