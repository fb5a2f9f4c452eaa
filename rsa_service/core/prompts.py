"""Aggregation prompts, rendered from user-replaceable Jinja templates.

Two templates: `aggregate.jinja` shows K > 1 candidate tails, `refine.jinja` shows one (K = 1, bounded
continuation). Both receive `problem` and `candidates` (a list of tail texts). The defaults live in the
repository's `prompts/` directory; `--prompts DIR` points at a user's own.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import jinja2

TEMPLATE_NAMES = ("aggregate.jinja", "refine.jinja")


def default_prompt_dir() -> Path:
    """The bundled templates: inside the wheel (`_prompts`), or the source checkout's `prompts/`."""
    package = Path(__file__).resolve().parents[1]
    bundled = package / "_prompts"
    return bundled if bundled.is_dir() else package.parent / "prompts"


class PromptTemplates(BaseModel):
    """The two template sources. Kept as text so a job can store exactly what it rendered with."""

    model_config = ConfigDict(frozen=True)

    aggregate: str
    refine: str

    @classmethod
    def load(cls, directory: Path | None = None) -> PromptTemplates:
        folder = directory or default_prompt_dir()
        missing = [name for name in TEMPLATE_NAMES if not (folder / name).is_file()]
        if missing:
            raise ValueError(f"prompts: {folder} lacks {', '.join(missing)}")
        return cls(
            aggregate=(folder / "aggregate.jinja").read_text(encoding="utf-8"),
            refine=(folder / "refine.jinja").read_text(encoding="utf-8"),
        )

    def render(self, problem: str, candidates: Sequence[str]) -> str:
        """The user message of one aggregation step."""
        if not candidates:
            raise ValueError("an aggregation prompt needs at least one candidate")
        source = self.refine if len(candidates) == 1 else self.aggregate
        return _compile(source).render(problem=problem, candidates=list(candidates)).strip() + "\n"


@functools.cache
def _environment() -> jinja2.Environment:
    # Imported on first render: the SDK reads core's models and must not load jinja2.
    import jinja2

    return jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)


_COMPILED: dict[str, jinja2.Template] = {}


def _compile(source: str) -> jinja2.Template:
    template = _COMPILED.get(source)
    if template is None:
        template = _COMPILED[source] = _environment().from_string(source)
    return template
