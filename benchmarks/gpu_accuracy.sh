#!/usr/bin/env bash
# One prepared run for a lent GPU machine, under 10 minutes: the `paper` preset and the `small` recipe,
# each trained for MINUTES minutes in all (both stages, split as each preset splits them) on the
# accuracy benchmark's 150 training CTs rendered around the KiTS19 label maps, and scored on its
# 30 validation cases through `segment` (benchmarks/accuracy.py --main-only --no-independent);
# then, if at least two of the ten minutes are left, the prediction speed of a 512 x 512 x 300 CT in
# fp32 and bf16.
#
# That machine has PyTorch, NumPy, SciPy, matplotlib, safetensors and tqdm but not MONAI, nibabel,
# ISA-L or connected-components-3d, reaches no package registry, and does not see ../shared. Here,
# once (both folders are git-ignored through .git/info/exclude):
#
#   .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#       -c constraints.txt monai nibabel connected-components-3d isal -d .whl
#   .venv/bin/python benchmarks/pack_labels.py      # ../shared/data/kits19-labels at gzip level 9 into .labels
#                                                    # (57 MB become about 17, under the 64 MiB a call carries)
#
#   device run:  bash benchmarks/gpu_accuracy.sh      (carry: .whl .labels)
#
# Rehearse on a CPU: DEVICE=cpu PYTHON=.venv/bin/python LIMIT=4 MINUTES=0.4 bash benchmarks/gpu_accuracy.sh
set -euo pipefail
# Seven files come back in OUT: run.txt (everything printed), results-{paper,small}.json and each stage's
# log.csv as log-PRESET-STAGE.csv (steps, step times, validation Dice per epoch).
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
MINUTES=${MINUTES:-2}
LIMIT=${LIMIT:-0}
LABELS=${LABELS:-.labels}
OUT=${OUT:-/tmp/kidneyseg-gpu-accuracy}
WORK=${WORK:-/tmp/kidneyseg-gpu-work}
mkdir -p "$OUT" "$WORK"
if compgen -G ".whl/*.whl" > /dev/null && ! "$PYTHON" -c "import monai, nibabel, cc3d, isal" 2> /dev/null; then
    "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PYTHON" -c "import torch, os; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else '', 'cores', os.cpu_count())" | tee "$OUT/run.txt"
JOBS=$("$PYTHON" -c "import os; print(os.cpu_count())")
for chosen in paper small; do
    start=$(date +%s)
    "$PYTHON" benchmarks/accuracy.py --labels "$LABELS" --work "$WORK" --preset "$chosen" --minutes "$MINUTES" \
        --main-only --no-independent --device "$DEVICE" --jobs "$JOBS" --limit "$LIMIT" --tag "$chosen" 2>&1 \
        | tr '\r' '\n' | grep -v "%|\|^ *$" | tee -a "$OUT/run.txt" \
        || echo "$chosen: the run failed" | tee -a "$OUT/run.txt"
    echo "$chosen: $(( $(date +%s) - start )) s wall-clock" | tee -a "$OUT/run.txt"
    cp "$WORK/results-$chosen.json" "$OUT/" || true
    for stage in localizer segmenter; do
        cp "$WORK/model-$chosen/$stage/log.csv" "$OUT/log-$chosen-$stage.csv" || true
    done
done
# The prediction speed, if the command has at least two of its ten minutes left.
if [ "$DEVICE" = cpu ]; then SHAPE=(--shape 160 160 96); else SHAPE=(); fi
if [ "$SECONDS" -lt 480 ]; then
    timeout $(( 570 - SECONDS )) "$PYTHON" benchmarks/predict_speed.py --device "$DEVICE" "${SHAPE[@]}" \
        --precision fp32 bf16 2>&1 | tee -a "$OUT/run.txt" || echo "predict_speed stopped (time)" | tee -a "$OUT/run.txt"
fi
echo "all: $SECONDS s" | tee -a "$OUT/run.txt"
