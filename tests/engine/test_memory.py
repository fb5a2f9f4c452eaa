"""Loading a checkpoint must not hold a second copy of the weights: peak resident growth < 1.3 × file size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from checkpoints import TinySpec, build_checkpoint
from conftest import COMPILE_TIMEOUT_S

pytestmark = pytest.mark.engine

# ~225 MB in fp32; the largest single tensor (an expert stack) is ~17 MB, well under the 30% headroom.
BIG = TinySpec(layers=8, hidden=512, heads=8, kv_heads=2, head_dim=64, experts=8, intermediate=512, router_hidden=64)
MIN_CHECKPOINT_BYTES = 200_000_000
PEAK_LIMIT = 1.3

# Runs in a fresh interpreter so the test process's own allocations cannot pollute the numbers. A tiny checkpoint is
# loaded first: the first load faults in ~80 MB of torch library code whatever the checkpoint size. Then the
# kernel's peak-RSS counter (VmHWM) is reset, so only the big load itself is measured.
_MEASURE = """
import json, sys
from pathlib import Path
import torch
from rsa_service.backends.engine.loader import load_model

def status_kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

torch.set_num_threads(1)
load_model(Path(sys.argv[2]), dtype=torch.float32)
before = status_kb("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
config, model = load_model(Path(sys.argv[1]), dtype=torch.float32)
print(json.dumps({"before_kb": before, "peak_kb": status_kb("VmHWM"), "after_kb": status_kb("VmRSS")}))
"""


@pytest.mark.timeout(COMPILE_TIMEOUT_S)  # builds a large checkpoint, then a subprocess with 120 s of its own
def test_loading_peaks_below_1_3x_checkpoint_size(tmp_path: Path) -> None:
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc to reset the peak-RSS counter")
    directory = build_checkpoint(tmp_path / "big", BIG, tokenizer=False)
    warm_up = build_checkpoint(tmp_path / "tiny", TinySpec(), tokenizer=False)
    size = sum(p.stat().st_size for p in directory.glob("*.safetensors"))
    assert size >= MIN_CHECKPOINT_BYTES
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(directory), str(warm_up)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    numbers = json.loads(done.stdout.strip().splitlines()[-1])
    peak = (numbers["peak_kb"] - numbers["before_kb"]) * 1024
    kept = (numbers["after_kb"] - numbers["before_kb"]) * 1024
    print(f"checkpoint {size / 1e6:.0f} MB: peak +{peak / size:.3f}×, resident after load +{kept / size:.3f}×")
    assert kept > 0.9 * size, "the weights should actually be resident after loading"
    assert peak < PEAK_LIMIT * size
