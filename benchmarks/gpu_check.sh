#!/usr/bin/env bash
# One prepared check for a lent GPU machine, about 8 minutes: the paper preset's training steps with
# 0 and with the default number of input workers (data-wait share, peak GPU memory), the bare step in
# fp32, bf16 and through torch.compile, and the end-to-end prediction of a 512 x 512 x 300 CT.
#
# That machine has PyTorch, NumPy, SciPy, matplotlib, safetensors and tqdm but not MONAI, nibabel or
# connected-components-3d, and reaches no package registry. Download their wheels here once (into a
# folder git ignores), carry it, and this script installs them there without an index:
#
#   .venv/bin/python -m pip download --only-binary=:all: --python-version 3.12 \
#       --platform manylinux_2_28_x86_64 --no-deps -c constraints.txt monai nibabel connected-components-3d \
#       -d .gpu-wheels
#   device run:  bash benchmarks/gpu_check.sh        (carry: .gpu-wheels)
#
# Rehearse on a CPU with small sizes:  DEVICE=cpu PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-/tmp/kidneyseg-gpu-check}
mkdir -p "$OUT"
if compgen -G ".gpu-wheels/*.whl" > /dev/null && ! "$PYTHON" -c "import monai, nibabel, cc3d" 2> /dev/null; then
    "$PYTHON" -m pip install --quiet --no-index --no-deps .gpu-wheels/*.whl
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
if [ "$DEVICE" = cpu ]; then  # a rehearsal: the same commands, sizes a CPU finishes in minutes
    TRAIN=(--presets small --stages segmenter --cases 4 --draws 8 --precisions bf16)
    PREDICT=(--shape 160 160 96 --precision fp32 bf16)
else
    TRAIN=(--presets paper --cases 12 --paper-draws 64 --precisions bf16 fp16 --compile)
    PREDICT=(--precision fp32 bf16 --repeat 2)
fi
"$PYTHON" benchmarks/train_throughput.py --device "$DEVICE" "${TRAIN[@]}" 2>&1 | tee "$OUT/train_throughput.txt"
"$PYTHON" benchmarks/predict_speed.py --device "$DEVICE" "${PREDICT[@]}" 2>&1 | tee "$OUT/predict_speed.txt"
