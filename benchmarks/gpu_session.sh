#!/usr/bin/env bash
# The one prepared device-machine check of issue 14 (an NVIDIA H200 lent by the `device` tool; see
# .library/device/README.md). That machine has Python 3.12 with torch 2.11, torchvision and timm but
# no pydantic or opacus, and reaches no package index: carry their wheels.
#
# Here, once (pip works here):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 opacus==1.6.0
# There: the device tool's run with carry [".whl"] and the command `bash benchmarks/gpu_session.sh`
# (timeout_s about 420, leaving time to rerun). It writes under $OUT: the gpu test log, the benchmark
# table and benchmarks/devices-cuda0.json (commit that one).
set -o pipefail
OUT=${OUT:-/tmp/fedleak-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, fedleak; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"
timeout 200 python3 -m pytest -m gpu -q -p no:cacheprovider --continue-on-collection-errors --ignore=tests/test_flower.py 2>&1 | tee "$OUT/gpu-tests.log" | tail -25
timeout 300 python3 benchmarks/devices.py --device cuda --quality-images 1 --out "$OUT/devices-cuda0.json" 2>&1 \
  | tee "$OUT/devices.log"
# Issue 25's largest cells, where a device session has time beyond the checks above (set PAPER_CELLS=1):
# the ROG paper's ResNet-18 at 128 px, B = 16 (≈ 80 s per iteration on the 2-core CPU), and the first
# cells of Lim & Chan's full-width stacking protocol. Both are studies: copy $OUT/studies back and
# run the same commands here to resume them where the device stopped.
if [ -n "${PAPER_CELLS:-}" ] && [ -d ../shared/data ]; then
  timeout "${PAPER_SECONDS:-600}" python3 -m fedleak study obfuscation --preset rog-paper --root ../shared/data/orl_faces \
    --set model=resnet18 --set 'images=[0]' --set device=cuda --out "$OUT/studies/rog-paper-resnet18" -q 2>&1 | tail -5
  timeout "${PAPER_SECONDS:-600}" python3 -m fedleak study stacking --preset paper --root ../shared/data \
    --set checkpoint=checkpoints/resnet18-cifar10-full.safetensors --set device=cuda \
    --out "$OUT/studies/stacking-paper-resnet18" -q 2>&1 | tail -5
fi
