from pathlib import Path

import pytest

from rsa_service.core.prompts import PromptTemplates, default_prompt_dir


def test_bundled_templates_render_candidates_in_order() -> None:
    templates = PromptTemplates.load()
    text = templates.render("What is 2+2?", ["tail one", "tail two", "tail three"])
    assert text.startswith("What is 2+2?")
    assert text.index("Candidate 1") < text.index("tail one") < text.index("Candidate 2") < text.index("tail two")
    assert "Candidate 3" in text and r"\boxed{}" in text.strip().splitlines()[-1]


def test_k1_uses_the_refine_template() -> None:
    text = PromptTemplates.load().render("P", ["only tail"])
    assert "Candidate" not in text and "only tail" in text and r"\boxed{}" in text


def test_rendering_is_byte_identical() -> None:
    templates = PromptTemplates.load()
    assert templates.render("Q", ["a", "b"]) == templates.render("Q", ["a", "b"])


def test_user_templates_and_errors(tmp_path: Path) -> None:
    (tmp_path / "aggregate.jinja").write_text("{{ problem }}|{% for c in candidates %}[{{ c }}]{% endfor %}")
    (tmp_path / "refine.jinja").write_text("{{ problem }}>{{ candidates[0] }}")
    templates = PromptTemplates.load(tmp_path)
    assert templates.render("Q", ["x", "y"]) == "Q|[x][y]\n"
    assert templates.render("Q", ["x"]) == "Q>x\n"
    with pytest.raises(ValueError, match="at least one candidate"):
        templates.render("Q", [])
    (tmp_path / "refine.jinja").unlink()
    with pytest.raises(ValueError, match=r"lacks refine\.jinja"):
        PromptTemplates.load(tmp_path)


def test_default_dir_exists() -> None:
    assert (default_prompt_dir() / "aggregate.jinja").is_file()
