"""Load a published ZAYA1 checkpoint directory into `model.ZayaForCausalLM`.

The model is built on the meta device, every tensor on disk is checked against the layout config.json implies
(before any weight memory is touched), then each tensor is copied from a memory-mapped shard straight into its
parameter in the target dtype (or quantized into int8 values and scales, `quantize="int8"`). The shard pages just
read are released after each tensor, so resident memory peaks near the size of the loaded model plus one tensor, not
model + file.
"""

from __future__ import annotations

import json
import logging
import mmap
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from rsa_service.backends.engine.config import ZayaConfig
from rsa_service.backends.engine.errors import CheckpointFileError, TensorLayoutError
from rsa_service.backends.engine.model import ZayaForCausalLM
from rsa_service.backends.engine.quantize import apply_quantization, quantize_into

logger = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_HEADER_LEN_BYTES = 8
_MAX_HEADER_BYTES = 100_000_000
_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
# Present in some exports of tied-embedding checkpoints; the tied model reads the embedding instead.
_TIED_HEAD_KEY = "lm_head.weight"


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor's bytes live: absolute byte range [begin, end) of `file`."""

    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint: the index's shards, else the single model.safetensors."""
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointFileError(f"{index}: not a safetensors index with a 'weight_map' ({exc})") from exc
        names = sorted(set(weight_map.values()))
        for name in names:
            if not (directory / name).is_file():
                raise CheckpointFileError(f"{directory / name}: shard listed in {INDEX_FILE} is missing")
        return [directory / name for name in names]
    if (directory / SINGLE_FILE).is_file():
        return [directory / SINGLE_FILE]
    raise CheckpointFileError(f"{directory}: no weights; expected {SINGLE_FILE} or {INDEX_FILE} with its shards")


def read_header(path: Path) -> dict[str, TensorEntry]:
    """Parse a safetensors header (8-byte little-endian length, then JSON) without reading any tensor data."""
    try:
        with path.open("rb") as f:
            size = path.stat().st_size
            length = int.from_bytes(f.read(_HEADER_LEN_BYTES), "little")
            if not 0 < length <= min(_MAX_HEADER_BYTES, size - _HEADER_LEN_BYTES):
                raise CheckpointFileError(f"{path}: not a safetensors file (header length {length})")
            header = json.loads(f.read(length))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointFileError(f"{path}: unreadable safetensors header: {exc}") from exc
    base = _HEADER_LEN_BYTES + length
    entries = {}
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        dtype = _DTYPES.get(meta.get("dtype"))
        if dtype is None:
            raise TensorLayoutError(
                f"{path}: tensor {key!r} has dtype {meta.get('dtype')!r}, expected one of {sorted(_DTYPES)}"
            )
        begin, end = (base + offset for offset in meta["data_offsets"])
        shape = tuple(meta["shape"])
        if end > size or end - begin != dtype.itemsize * _numel(shape):
            raise CheckpointFileError(f"{path}: tensor {key!r} has a byte range that does not fit the file")
        entries[key] = TensorEntry(path, dtype, shape, begin, end)
    return entries


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def tensor_table(directory: Path) -> dict[str, TensorEntry]:
    """Every tensor of the checkpoint by key, checked against the index when there is one."""
    table: dict[str, TensorEntry] = {}
    for path in weight_files(directory):
        for key, entry in read_header(path).items():
            if key in table:
                raise TensorLayoutError(f"{path}: tensor {key!r} is also in {table[key].file.name}")
            table[key] = entry
    index = directory / INDEX_FILE
    if index.is_file():
        for key, name in json.loads(index.read_text(encoding="utf-8"))["weight_map"].items():
            if key not in table or table[key].file.name != name:
                raise TensorLayoutError(f"{directory / name}: tensor {key!r} listed in {INDEX_FILE} is not in it")
    return table


def check_layout(table: dict[str, TensorEntry], expected: dict[str, torch.Tensor], tied: bool) -> None:
    """Raise naming the first unknown key, missing key or wrong shape; config.json defines what is expected."""
    for key, entry in table.items():
        if key not in expected and not (tied and key == _TIED_HEAD_KEY):
            raise TensorLayoutError(
                f"{entry.file}: tensor {key!r} is not part of the ZAYA1 layout for this config.json"
            )
    for key, param in expected.items():
        if key not in table:
            raise TensorLayoutError(f"checkpoint: tensor {key!r} required by config.json is in no weight file")
        entry = table[key]
        if entry.shape != tuple(param.shape):
            raise TensorLayoutError(
                f"{entry.file}: tensor {key!r} has shape {list(entry.shape)}, expected {list(param.shape)} "
                "from config.json"
            )


def load_model(
    directory: Path,
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
    skip_returns_input: bool = False,
    quantize: str = "none",
) -> tuple[ZayaConfig, ZayaForCausalLM]:
    """Build the model for `directory` and fill it from the checkpoint, without a second copy of the weights.

    `quantize="int8"` stores the weights `quantize.int8_weights` lists as int8 with per-row scales."""
    config = ZayaConfig.from_checkpoint(directory)
    table = tensor_table(directory)
    with torch.device("meta"):
        model = ZayaForCausalLM(config, dtype, skip_returns_input=skip_returns_input)
        apply_quantization(model, quantize)
    expected = model.state_dict()
    check_layout(table, expected, config.tie_word_embeddings)
    model.to_empty(device=device)
    targets = model.state_dict()
    by_file: dict[Path, list[str]] = defaultdict(list)
    for key in expected:
        by_file[table[key].file].append(key)
    for path, keys in by_file.items():
        _copy_from_file(path, [(table[key], targets[key], _scale(model, key, targets[key])) for key in keys])
    model.eval().requires_grad_(False)
    logger.info(
        "loaded %s: %d tensors from %d files as %s%s", directory, len(expected), len(by_file), dtype,
        "" if quantize == "none" else f", {quantize} weights",
    )  # fmt: skip
    return config, model


def _scale(model: ZayaForCausalLM, key: str, target: torch.Tensor) -> torch.Tensor | None:
    """The scales of an int8 weight (the model's `{key}_scale` buffer); None for any other tensor."""
    return model.get_buffer(f"{key}_scale") if target.dtype == torch.int8 else None


def _copy_from_file(path: Path, copies: list[tuple[TensorEntry, torch.Tensor, torch.Tensor | None]]) -> None:
    """Copy (and convert, or quantize where a scale is given) each tensor from a private read-only-in-practice
    mapping, dropping its pages after."""
    page = mmap.PAGESIZE
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) as mapped:
        for entry, target, scale in copies:
            count = _numel(entry.shape)
            if count:
                source = torch.frombuffer(mapped, dtype=entry.dtype, count=count, offset=entry.begin)
                with torch.no_grad():
                    if scale is None:
                        target.copy_(source.view(entry.shape))
                    else:
                        quantize_into(source.view(entry.shape), target, scale)
                del source  # the mapping cannot close while a tensor still exports its buffer
            if hasattr(mapped, "madvise"):
                start = entry.begin - entry.begin % page
                mapped.madvise(mmap.MADV_DONTNEED, start, entry.end - start)
