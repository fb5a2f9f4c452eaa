"""A tiny ZAYA1-architecture model trained by the project itself, so Markovian RSA can run with no downloads."""

from pathlib import Path

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoint"
HELDOUT_PATH = Path(__file__).resolve().parent / "heldout.jsonl"
