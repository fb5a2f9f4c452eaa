"""Each package's `__all__` is its exported surface: every class and function it defines or re-exports from its
own modules is listed, and every listed name exists."""

from __future__ import annotations

import importlib

import pytest

PACKAGES = ["rsa_service.api", "rsa_service.backends", "rsa_service.core", "rsa_service.jobs", "rsa_service.wire"]


def _defined_in(value: object, name: str) -> bool:
    module = str(getattr(value, "__module__", ""))
    return module == name or module.startswith(name + ".")


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_exactly_the_exported_surface(name: str) -> None:
    package = importlib.import_module(name)
    ours = {
        attr
        for attr, value in vars(package).items()
        if not attr.startswith("_") and callable(value) and _defined_in(value, name)
    }
    assert ours <= set(package.__all__), f"public but not in __all__: {sorted(ours - set(package.__all__))}"
    assert [attr for attr in package.__all__ if not hasattr(package, attr)] == []
    assert len(package.__all__) == len(set(package.__all__))
