"""The model is plain PyTorch: importing it loads neither the op registry, the dispatch policy nor `accel` (the
AVX-512 kernels and inductor hooks): no engine module beyond the model's own and the config."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")

pytestmark = pytest.mark.engine

_LOADED = """
import json, sys
import rsa_service.backends.engine.model
print(json.dumps(sorted(m for m in sys.modules if m.startswith("rsa_service"))))
"""


def test_the_model_imports_only_torch_and_the_engine_config() -> None:
    done = subprocess.run([sys.executable, "-c", _LOADED], capture_output=True, text=True, timeout=120, check=True)
    engine = "rsa_service.backends.engine"
    loaded = {m for m in json.loads(done.stdout) if m.startswith(f"{engine}.")}
    # config reads config.json through pydantic and names its errors (`errors`); `engine`'s __init__ loads those too
    assert loaded == {f"{engine}.{name}" for name in ("model", "attention", "step", "config", "errors")}
