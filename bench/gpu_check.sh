#!/usr/bin/env bash
# The GPU checks, as one prepared command for a session lent a CUDA machine (the `device` tool's `run`):
#   run(command="bash bench/gpu_check.sh", timeout_s=540)
# It uses the machine's own python3 (which has torch, typer, rich, safetensors, pytest, transformers) with
# this checkout's src/ on the path, and writes its logs and tables under $OUT (or ./gpu_out) to commit.
# Budget: about 6-8 minutes; each part has its own time limit, so one that hangs does not cost the others.
set -u
cd "$(dirname "$0")/.."
out="${OUT:-gpu_out}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src:$PWD/tests:$PWD/bench${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py="${PY:-python3}"  # PY=.venv/bin/python to try it here (everything skips without CUDA)
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  $py -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'
} > "$out/machine.txt" 2>&1
# 1. The CUDA tests (marked `cuda`; they skip without a GPU everywhere else).
timeout 180 $py -m pytest -q -p no:cacheprovider -m cuda -rs tests > "$out/cuda_tests.log" 2>&1
echo "cuda tests: rc=$?" >> "$out/machine.txt"
# 2. stats hooks on the GPU: overhead against bare forward+backward and .item() hooks, and syncs per step.
timeout 200 $py bench/bench_stats.py --device cuda --runs 5 > "$out/bench_stats_cuda.md" 2>&1
echo "bench_stats: rc=$?" >> "$out/machine.txt"
# 3. watch on the GPU: watched against unwatched training steps.
timeout 150 $py bench/bench_watch.py --device cuda --steps 200 --every 100 --stats-runs 3 --progress > "$out/bench_watch_cuda.md" 2>&1
echo "bench_watch: rc=$?" >> "$out/machine.txt"
cat "$out/machine.txt"
