"""How often the plausibility flags of the volume report (kidneyseg/measure.py) fire.

    .venv/bin/python benchmarks/flags.py FOLDER [FOLDER ...] [--predictions DIR]

Each FOLDER is in the KiTS layout (case_XXXXX/imaging.nii.gz, segmentation.nii.gz). On a ground-truth
label map every flag is a false alarm: the labels are right by definition. With ``--predictions DIR``
(one folder per FOLDER, DIR/<case_id>.nii.gz, as ``kidneyseg predict`` writes them) the flags on the
predictions are listed beside each case's kidney+tumour Dice, so that a flag can be read against the
error it points at.

Typical folders: benchmarks/.work/accuracy/{train,validation,independent} (written by accuracy.py)
and a demo's held-out cases (``kidneyseg demo --out D``: D/heldout, predictions in D/predictions).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from kidneyseg import io
from kidneyseg.evaluation import case_scores
from kidneyseg.measure import measure


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="KiTS-layout folders with ground truth")
    parser.add_argument("--predictions", nargs="*", type=Path, default=[],
                        help="one prediction folder per FOLDER: its flags are listed against the case's Dice")
    args = parser.parse_args()
    if args.predictions and len(args.predictions) != len(args.folders):
        parser.error("give one --predictions folder per FOLDER")
    for i, folder in enumerate(args.folders):
        cases = io.layout.kits_cases(folder)
        on_truth, on_pred, names = 0, 0, Counter()
        for case in cases:
            image, truth = io.load_case(case)
            flags = measure(truth.array, image).flags
            on_truth += bool(flags)
            names.update(f.name for f in flags)
            for flag in flags:
                print(f"{folder.name}/{case.case_id} ground truth: {flag}")
            if args.predictions:
                labels = io.load_label_map(args.predictions[i] / f"{case.case_id}.nii.gz").array
                flags = measure(labels, image).flags
                on_pred += bool(flags)
                dice = case_scores(labels, truth.array)["kidney_tumor"]
                for flag in flags:
                    print(f"{folder.name}/{case.case_id} prediction (kidney+tumour Dice {dice:.3f}): {flag}")
        line = f"{folder}: {on_truth} of {len(cases)} ground-truth label maps flagged"
        if args.predictions:
            line += f"; {on_pred} of {len(cases)} predictions flagged"
        print(line + (f" ({dict(names)})" if names else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
