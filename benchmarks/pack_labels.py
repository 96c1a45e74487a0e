"""Copy the KiTS19 label maps small enough to travel to another machine (benchmarks/gpu_accuracy.sh).

    .venv/bin/python benchmarks/pack_labels.py [--labels ../shared/data/kits19-labels] [--out .labels]

Each ``case_*/segmentation.nii.gz`` is decompressed and written again at gzip level 9 (the same
bytes inside; 57 MB become about 17), with the folder's LICENSE and kits.json beside them. A case
already packed is kept; each file appears complete or not at all.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=Path, default=HERE.parents[1] / "shared" / "data" / "kits19-labels")
    parser.add_argument("--out", type=Path, default=HERE.parent / ".labels")
    args = parser.parse_args()
    if not args.labels.is_dir():
        print(f"label maps not found at {args.labels}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("LICENSE", "kits.json"):
        if (args.labels / name).exists():
            shutil.copy(args.labels / name, args.out / name)
    for case in sorted(p for p in args.labels.glob("case_*") if p.is_dir()):
        out = args.out / case.name / "segmentation.nii.gz"
        if out.exists():
            continue
        out.parent.mkdir(exist_ok=True)
        with gzip.open(case / "segmentation.nii.gz") as handle:
            data = handle.read()
        partial = out.with_name(out.name + ".tmp")
        partial.write_bytes(gzip.compress(data, 9, mtime=0))
        partial.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
