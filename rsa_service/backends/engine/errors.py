"""The engine's exceptions, rooted in the Backend error tree so the runner handles them like any backend's.

    BackendError
    └── EngineError                       anything the in-process engine raises
        └── CheckpointError               a checkpoint directory that cannot be loaded as ZAYA1
            ├── CheckpointFileError       a missing, unreadable or malformed file (config, shard, index, tokenizer)
            ├── UnsupportedConfigError    a config.json value this engine does not implement
            └── TensorLayoutError         a tensor with the wrong shape or dtype, an unknown key, a missing key

`CheckpointError` is also a `BackendUnavailableError`: a backend that cannot load its model is unusable, not
retryable. Every message names the file, key or field at fault and what was expected.
"""

from __future__ import annotations

from rsa_service.backends.base import BackendError, BackendUnavailableError


class EngineError(BackendError):
    """Base of every error the in-process engine raises."""


class CheckpointError(EngineError, BackendUnavailableError):
    """The checkpoint directory cannot be loaded."""


class CheckpointFileError(CheckpointError):
    """A file the checkpoint needs is missing, unreadable or malformed."""


class UnsupportedConfigError(CheckpointError):
    """config.json asks for something this engine does not implement."""


class TensorLayoutError(CheckpointError):
    """The tensors on disk do not match the layout config.json implies."""
