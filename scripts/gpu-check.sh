#!/usr/bin/env bash
# The engine's CUDA path, checked in minutes on any machine with an NVIDIA GPU, as is:
#   ./scripts/gpu-check.sh
# It makes .venv (scripts/setup.sh) with a CUDA build of torch, runs the device-aware engine tests on the GPU
# (RSA_TEST_DEVICE=cuda), benchmarks the bundled model's decode on the GPU and on the CPU, and ends with one summary
# line; the exit status is the tests'. A torch with CUDA already importable by python3 is reused (a venv that sees
# the system's packages) so an offline machine needs no download; otherwise TORCH from TORCH_INDEX_URL is installed.
set -uo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp -d)/gpu-check
mkdir -p "$log"

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >"$log/gpus.txt" 2>&1; then
  echo "gpu-check: SKIP: no NVIDIA GPU or driver here (nvidia-smi)"
  exit 2
fi
cuda_torch() { "$1" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }

if [ -x .venv/bin/python ] && cuda_torch .venv/bin/python; then
  : # an earlier run's venv: reused as it is
elif cuda_torch "${PYTHON:-python3}"; then
  [ -d .venv ] || "${PYTHON:-python3}" -m venv --system-site-packages .venv
  TORCH="" ./scripts/setup.sh || exit 1
else
  TORCH="${TORCH:-torch==2.13.0}" TORCH_INDEX_URL="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cu128}" \
    ./scripts/setup.sh || exit 1
fi
if ! cuda_torch .venv/bin/python; then
  echo "gpu-check: FAIL: .venv's torch cannot use the GPU: $(.venv/bin/python -c 'import torch; print(torch.__version__)')"
  exit 1
fi
torch_version=$(.venv/bin/python -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0))')

# The tests that run the engine on RSA_TEST_DEVICE: device, dtype, threads and compile settings, eager and compiled
# logits against the CPU's, the backend and the CLI. --timeout: the first compile on a fresh machine is slow.
RSA_TEST_DEVICE=cuda timeout 1200 .venv/bin/python -m pytest -q -p no:cacheprovider --timeout 900 \
  tests/engine/test_device.py tests/engine/test_backend.py tests/engine/test_cli.py 2>&1 | tee "$log/tests.txt"
tests_rc=${PIPESTATUS[0]}
tests_line=$(tail -n 1 "$log/tests.txt")

bench() {  # device batch → decode tokens/s (the step compiled and warmed up before timing)
  timeout 600 .venv/bin/rsa engine bench --checkpoint rsa_service/tinymodel/checkpoint --device "$1" --batch "$2" \
    --prompt-tokens 128 --new-tokens 64 --compile --json 2>"$log/bench-$1-$2.err" \
    | .venv/bin/python -c 'import json, sys; print(format(json.load(sys.stdin)["decode_tokens_per_s"], ",.0f"), "tok/s")' \
    2>/dev/null || echo "failed (see $log/bench-$1-$2.err)"
}
bench_lines=()
for batch in 1 8; do
  for device in cuda cpu; do
    line="$device batch $batch $(bench "$device" "$batch")"
    echo "$line"
    bench_lines+=("$line")
  done
done

status=PASS
[ "$tests_rc" -eq 0 ] || status=FAIL
echo
summary=$(IFS=,; echo "${bench_lines[*]}")
echo "gpu-check: $status: torch $torch_version; tests: $tests_line; decode: $summary; logs in $log"
exit "$tests_rc"
