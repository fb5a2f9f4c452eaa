"""Checkpoint loading: sharded and single-file layouts, and a clear error for each way a checkpoint can be wrong."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch
from checkpoints import TinySpec, build_checkpoint
from safetensors.torch import load_file, save_file

from rsa_service.backends.engine.errors import (
    CheckpointFileError,
    TensorLayoutError,
    UnsupportedConfigError,
)
from rsa_service.backends.engine.loader import INDEX_FILE, SINGLE_FILE, load_model

pytestmark = pytest.mark.engine
SPEC = TinySpec(layers=2, seed=5)
Q_PROJ = "model.layers.1.self_attn.qkv_proj.q_proj.weight"


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("single") / "ckpt", SPEC, tokenizer=False)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("sharded") / "ckpt", SPEC, max_shard_size="40KB", tokenizer=False)


@pytest.fixture
def broken(single: Path, tmp_path: Path) -> Path:
    """A private copy of the single-file checkpoint to damage."""
    return Path(shutil.copytree(single, tmp_path / "ckpt"))


def _rewrite(directory: Path, change) -> None:
    tensors = load_file(str(directory / SINGLE_FILE))
    change(tensors)
    save_file(tensors, str(directory / SINGLE_FILE))


def _edit_config(directory: Path, **fields: object) -> None:
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def test_sharded_checkpoint_with_index_loads_the_same_weights(single: Path, sharded: Path) -> None:
    assert (sharded / INDEX_FILE).is_file() and len(list(sharded.glob("*.safetensors"))) > 2
    _, from_single = load_model(single, dtype=torch.float32)
    _, from_shards = load_model(sharded, dtype=torch.float32)
    expected = load_file(str(single / SINGLE_FILE))
    for key, value in from_shards.state_dict().items():
        assert torch.equal(value, expected[key]), key
        assert torch.equal(value, from_single.state_dict()[key]), key


def test_loads_into_bfloat16_directly(single: Path) -> None:
    _, model = load_model(single, dtype=torch.bfloat16)
    expected = load_file(str(single / SINGLE_FILE))[Q_PROJ]
    assert model.state_dict()[Q_PROJ].dtype == torch.bfloat16
    assert torch.equal(model.state_dict()[Q_PROJ], expected.to(torch.bfloat16))


def test_missing_shard_is_named(sharded: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(sharded, tmp_path / "ckpt"))
    victim = sorted(copy.glob("*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(CheckpointFileError, match=rf"{victim.name}: shard listed in {INDEX_FILE} is missing"):
        load_model(copy)


def test_wrong_shape_names_key_and_expected_shape(broken: Path) -> None:
    _rewrite(broken, lambda t: t.__setitem__(Q_PROJ, torch.zeros(8, 8)))
    expected = [SPEC.heads * SPEC.head_dim, SPEC.hidden]
    with pytest.raises(TensorLayoutError, match=re.escape(f"'{Q_PROJ}' has shape [8, 8], expected {expected}")):
        load_model(broken)


def test_unknown_key_is_named(broken: Path) -> None:
    _rewrite(broken, lambda t: t.__setitem__("model.layers.0.mystery.weight", torch.zeros(2)))
    with pytest.raises(TensorLayoutError, match=r"'model.layers.0.mystery.weight' is not part of the ZAYA1 layout"):
        load_model(broken)


def test_missing_key_is_named(broken: Path) -> None:
    _rewrite(broken, lambda t: t.pop("model.layers.1.self_attn.qk_norm.temp"))
    with pytest.raises(TensorLayoutError, match=r"'model.layers.1.self_attn.qk_norm.temp' required by config.json"):
        load_model(broken)


def test_tied_head_requires_no_lm_head_but_untied_does(broken: Path) -> None:
    _edit_config(broken, tie_word_embeddings=False)
    with pytest.raises(TensorLayoutError, match=r"'lm_head.weight' required"):
        load_model(broken)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"num_experts_per_tok": 2}, r"num_experts_per_tok=2 is not supported: Input should be 1"),
        ({"hidden_act": "gelu"}, r"hidden_act='gelu' is not supported: Input should be 'silu'"),
        ({"layer_types": ["hybrid", "hybrid_sliding"]}, r"layer_types.1='hybrid_sliding' is not supported"),
        ({"model_type": "llama"}, r"model_type='llama' is not supported: Input should be 'zaya'"),
        ({"num_key_value_heads": 3}, r"num_attention_heads=4 must be a multiple of num_key_value_heads=3"),
        ({"rope_parameters": {"hybrid": {"rope_type": "yarn"}}}, r"rope.rope_type='yarn' is not supported"),
    ],
)
def test_unsupported_config_values_name_field_and_expectation(broken: Path, fields: dict, message: str) -> None:
    _edit_config(broken, **fields)
    with pytest.raises(UnsupportedConfigError, match=message):
        load_model(broken)


def test_missing_config_and_missing_weights(broken: Path) -> None:
    (broken / SINGLE_FILE).unlink()
    with pytest.raises(CheckpointFileError, match=rf"no weights; expected {SINGLE_FILE} or {INDEX_FILE}"):
        load_model(broken)
    (broken / "config.json").unlink()
    with pytest.raises(CheckpointFileError, match=r"config.json: missing"):
        load_model(broken)


def test_truncated_shard_is_reported(broken: Path) -> None:
    path = broken / SINGLE_FILE
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointFileError, match=r"byte range that does not fit the file"):
        load_model(broken)
