"""The explicit create-job request stays in step with RSAParams: same names, same types, same constraints."""

from __future__ import annotations

from typing import get_type_hints

import pytest

from rsa_service.core.params import RSAParams
from rsa_service.wire import JobCreate, JobParams

REQUEST_ONLY = {"problem", "backend", "model"}


def test_job_create_has_every_rsa_parameter_and_nothing_else() -> None:
    assert set(JobCreate.model_fields) - REQUEST_ONLY == set(RSAParams.model_fields)
    assert set(get_type_hints(JobParams)) == set(RSAParams.model_fields)


@pytest.mark.parametrize("name", list(RSAParams.model_fields))
def test_each_parameter_keeps_its_type_and_constraints(name: str) -> None:
    param, field = RSAParams.model_fields[name], JobCreate.model_fields[name]
    assert field.annotation == param.annotation | None
    assert field.metadata == param.metadata
    assert field.description == param.description
    assert field.default is None
    assert get_type_hints(JobParams)[name] == param.annotation
