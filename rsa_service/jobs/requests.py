"""The generation requests a job sends, built in one place, and the check that they fit the model's context.

The runner, `rsa reason`, `rsa submit` and the API's create routes all call `check_fits` before the first
generation, so a configuration that cannot fit is refused up front instead of after round 0 has been paid for.
"""

from __future__ import annotations

from rsa_service.backends.base import Backend, ContextLengthError, GenerationRequest
from rsa_service.core.conversation import aggregation_messages, initial_messages
from rsa_service.jobs.models import JobSpec

CONTEXT_MARGIN_TOKENS_PER_TAIL = 16  # re-tokenising a tail inside a prompt may merge a few tokens differently


def generation_request(
    spec: JobSpec,
    content: str,
    max_tokens: int,
    seed: int,
    *,
    round_index: int,
    final_select: bool = False,
    lineage: str | None = None,
) -> GenerationRequest:
    """The request for one step: round 0 sends the job's conversation; later prompts (`content`, the rendered
    templates) go under its system messages."""
    params = spec.params
    if round_index == 0 and not final_select:
        messages = initial_messages(spec.conversation, content)
    else:
        messages = aggregation_messages(spec.conversation, content)
    return GenerationRequest(
        messages=messages,
        max_tokens=max_tokens,
        temperature=params.select_temperature if final_select else params.temperature,
        top_p=params.select_top_p if final_select else params.top_p,
        top_k=params.select_top_k if final_select else params.top_k,
        min_p=None if final_select else params.min_p,
        seed=seed,
        lineage=lineage,
    )


async def check_fits(backend: Backend, spec: JobSpec) -> None:
    """Refuse a configuration whose largest prompt plus budget cannot fit the model's context.

    The Markovian bound: an aggregation prompt is at most |q| + K·τ + template overhead, however long the model
    thought, so one count decides every round in advance. Raises ContextLengthError with the sizes set.
    """
    context = (await backend.capabilities()).context_length
    if context is None:
        return
    params = spec.params
    budget = params.max_tokens_for(0)
    first = await backend.count_tokens(generation_request(spec, spec.problem, budget, 0, round_index=0))
    if first + budget > context:
        raise ContextLengthError(
            f"problem: the first prompt ({first} tokens) plus its budget ({budget} new tokens) exceeds the "
            f"model's context of {context} tokens",
            prompt_tokens=first,
            max_tokens=budget,
            context_length=context,
        )
    if params.rounds == 0:
        return
    k = min(params.subset, params.population)
    template = spec.templates.render(spec.problem, ["."] * k)
    overhead = await backend.count_tokens(generation_request(spec, template, 1, 0, round_index=1))
    largest = overhead + k * (params.tail_tokens + CONTEXT_MARGIN_TOKENS_PER_TAIL)
    budget = max(params.trace_tokens if params.rounds > 1 else 0, params.final_tokens)
    if largest + budget > context:
        raise ContextLengthError(
            f"tail_tokens: an aggregation prompt can reach {largest} tokens (problem and template {overhead} + "
            f"K={k} × τ={params.tail_tokens}); with a budget of {budget} new tokens that exceeds the model's "
            f"context of {context} tokens. Lower tail_tokens, subset or the token budgets.",
            prompt_tokens=largest,
            max_tokens=budget,
            context_length=context,
        )
