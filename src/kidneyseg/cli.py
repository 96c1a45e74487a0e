"""Command line: parse -> settings -> one library call. ``kidneyseg --help`` lists the commands."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings
from pathlib import Path

from kidneyseg.errors import InvalidInputError, KidneysegError, Terminated, UsageError
from kidneyseg.version import package_version

EPILOG = ("exit codes: 0 ok, 2 usage, 3 invalid input, 4 bad model file, 5 resource/I-O failure, "
          "6 training diverged (NaN/Inf loss), 7 some cases of a folder run failed")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kidneyseg", epilog=EPILOG,
                                     description="Two-stage 3D U-Net segmentation of kidneys and kidney tumours in CT.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="write procedural phantom CTs in the KiTS layout", epilog=EPILOG)
    p.add_argument("out", type=Path, help="output folder (case_XXXXX/imaging.nii.gz, segmentation.nii.gz)")
    p.add_argument("--cases", type=int, default=10, help="number of cases (default 10)")
    p.add_argument("--seed", type=int, default=0, help="random seed; case i depends only on (seed, i)")
    p.add_argument("--from-labels", type=Path, metavar="LABEL_DIR",
                   help="draw a phantom CT around every real label map LABEL_DIR/case_*/segmentation.nii.gz, "
                        "on its exact grid (subtypes from LABEL_DIR/kits.json); --cases is then ignored")

    p = sub.add_parser("check", help="check every case of a KiTS-layout dataset and report problems",
                       epilog=EPILOG)
    p.add_argument("data", type=Path, help="dataset folder (case_XXXXX/imaging.nii.gz, segmentation.nii.gz)")

    p = sub.add_parser("train", help="train one stage on a KiTS-layout dataset", epilog=EPILOG)
    p.add_argument("data", type=Path, help="dataset folder (case_XXXXX/imaging.nii.gz, segmentation.nii.gz)")
    p.add_argument("--stage", choices=("localizer", "segmenter"), required=True)
    p.add_argument("--preset", default="paper", help="settings preset: paper (GPU), small (CPU), tiny (demo)")
    p.add_argument("--out", type=Path, required=True, help="model directory (the stage goes into OUT/<stage>/)")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT/<stage> where it stopped")
    p.add_argument("--overwrite", action="store_true", help="discard an existing run in OUT/<stage>")
    p.add_argument("--epochs", type=int, help="override the preset's number of epochs")
    p.add_argument("--minutes", type=float,
                   help="override the preset's training time limit in minutes (0 = none); checked before every "
                   "step, so the last epoch may end early")
    p.add_argument("--seed", type=int, help="override the preset's seed")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any setting, e.g. --set lr=1e-3 --set network.base_filters=8 "
                        "--set pipeline.min_box_vox=32")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--workers", type=int,
                   help="processes preparing the training inputs (default: 0 = in the training process on a CPU, "
                        "whose cores the network uses; on a GPU one per core beyond the first, at most 8); the "
                        "trained weights are the same for any number")
    p.add_argument("--compile", action="store_true",
                   help="run the network through torch.compile (compiles once at the start; for long GPU runs)")

    p = sub.add_parser("predict", help="segment a CT file, DICOM folder or KiTS-layout folder", epilog=EPILOG)
    p.add_argument("input", type=Path, help="a .nii/.nii.gz CT, a DICOM series folder, or a folder of cases")
    p.add_argument("out_dir", type=Path, help="writes OUT_DIR/<case_id>.nii.gz")
    p.add_argument("--model", type=Path, required=True, help="model directory written by 'kidneyseg train'")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: skip them)")
    p.add_argument("--tta", action="store_true", help="average predictions over flips (test-time augmentation), "
                   "also when the model's pipeline.json does not ask for it")
    p.add_argument("--allow-4d", action="store_true", help="accept 4D images and use their first volume")
    p.add_argument("--output-format", choices=("nifti", "dicom-seg", "both"), default="nifti",
                   help="nifti (OUT_DIR/<case_id>.nii.gz, default), dicom-seg (OUT_DIR/<case_id>.seg.dcm, a DICOM "
                        "Segmentation referencing the input series; DICOM inputs only, needs kidneyseg[dicom]) "
                        "or both")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"),
                   help="network precision for prediction (default: each stage's own, as trained); bf16 falls back "
                        "to fp32 on a device without bf16 support, fp16 (for GPUs) on a CPU")
    p.add_argument("--shard", metavar="K/N", type=_shard, default=(1, 1),
                   help="predict every N-th input of the sorted list from the K-th on (1-based), e.g. 3/8 as job 3 "
                        "of a cluster array of 8; the shards together write what one run would")
    p.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch",
                   help="run the networks in PyTorch (a model directory from 'train') or in ONNX Runtime (a directory "
                        "from 'kidneyseg export ... --format onnx'; fp32, CPU)")
    p.add_argument("--no-qa", action="store_true", help="do not write the QA page OUT_DIR/<case_id>.qa.html "
                   "(slices with outlines, the volume report, flags and warnings; written by default)")
    p.add_argument("--series", metavar="UID", help="in a DICOM folder holding several series, the one to segment "
                                                     "(without it such a folder is refused with a list of them)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")

    p = sub.add_parser("export", help="write a model directory's networks as ONNX, for predict --backend onnxruntime",
                       epilog=EPILOG)
    p.add_argument("model", type=Path, help="model directory written by 'kidneyseg train'")
    p.add_argument("out", type=Path,
                   help="a new folder: localizer.onnx, segmenter.onnx, pipeline.json, data_profile.json")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="export format (default onnx)")

    p = sub.add_parser("evaluate", help="KiTS19 Dice scores of predictions against ground truth", epilog=EPILOG)
    p.add_argument("pred_dir", type=Path, help="folder of <case_id>.nii.gz predictions")
    p.add_argument("gt_dir", type=Path, help="KiTS-layout folder (case_XXXXX/segmentation.nii.gz)")
    p.add_argument("--out", type=Path, help="where scores.csv/scores.json go (default: PRED_DIR)")

    p = sub.add_parser("demo", help="synthesise phantoms, train both stages, predict and score held-out cases",
                       epilog=EPILOG)
    p.add_argument("--out", type=Path, default=Path("demo-output"), help="working folder (default demo-output)")
    p.add_argument("--cases", type=int, default=40, help="training cases to synthesise (default 40)")
    p.add_argument("--heldout", type=int, default=8, help="held-out cases to score (default 8)")
    p.add_argument("--minutes", type=float, default=0.0,
                   help="cap on each stage's training minutes (default 0: the tiny preset's epochs, about 8 min "
                        "in all on 2 CPU cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="change a setting of the tiny preset for both stages, as train --set does, or for "
                        "one with a stage prefix (e.g. --set loss=regions, --set pipeline.tta_flips=false, "
                        "--set segmenter.phase_prob=0.3)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.formatwarning = lambda message, category, *rest: f"warning: {message}\n"
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return int(_COMMANDS[args.command](args) or 0)
    except KidneysegError as exc:
        print(f"kidneyseg: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except MemoryError:
        print("kidneyseg: error: out of memory", file=sys.stderr)
        return 5
    except KeyboardInterrupt:
        print("kidneyseg: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("kidneyseg: terminated (SIGTERM); files being written were removed, finished ones are complete",
              file=sys.stderr)
        return Terminated.exit_code


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _synth(args) -> int:
    from kidneyseg.synthetic import synthesize_dataset, synthesize_from_labels

    if args.from_labels is not None:
        folders = synthesize_from_labels(args.from_labels, args.out, args.seed, progress=sys.stderr.isatty())
        print(f"wrote {len(folders)} cases to {args.out}")
        return 0
    _positive(args.cases, "--cases")
    folders = synthesize_dataset(args.out, args.cases, args.seed, progress=sys.stderr.isatty())
    print(f"wrote {len(folders)} cases to {args.out}")
    return 0


def _check(args) -> int:
    from kidneyseg.check import check_dataset, format_report

    reports = check_dataset(args.data, progress=sys.stderr.isatty())
    print(format_report(reports))
    return InvalidInputError.exit_code if any(r.errors for r in reports) else 0


def _train(args) -> int:
    from kidneyseg.config import override_preset, preset
    from kidneyseg.training.fit import fit

    extra = [f"{k}={v}" for k, v in (("epochs", args.epochs), ("max_minutes", args.minutes), ("seed", args.seed))
             if v is not None]
    stage, pipeline = override_preset(preset(args.preset), args.stage, extra + args.overrides)
    result = fit(args.data, args.out, stage, pipeline, resume=args.resume, overwrite=args.overwrite,
                 device=args.device, workers=args.workers, compile=args.compile)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line from rank 0
        print(f"{args.stage}: {result.epochs_done} epochs, {result.minutes:.1f} min, best validation Dice "
              f"{result.best_val_dice:.3f}; weights in {result.run_dir}")
    return 0


def _predict(args) -> int:
    from kidneyseg.batch import format_report, predict_inputs

    summary = predict_inputs(args.input, args.out_dir, args.model, overwrite=args.overwrite, tta=args.tta,
                             device=args.device, allow_4d=args.allow_4d, series=args.series,
                             output_format=args.output_format, precision=args.precision, shard=args.shard,
                             qa=not args.no_qa, backend=args.backend)
    if summary.written:
        print(format_report(args.out_dir, summary.written))
        print(f"volume reports: {args.out_dir}/<case_id>.report.json and {args.out_dir}/report.csv")
        if not args.no_qa:
            print(f"QA pages (open in a browser): {args.out_dir}/<case_id>.qa.html")
    print(summary.describe())
    return summary.exit_code()


def _export(args) -> int:
    from kidneyseg.export import export_onnx

    out = export_onnx(args.model, args.out)
    print(f"exported to {out}; predict with: kidneyseg predict INPUT OUT_DIR --model {out} --backend onnxruntime")
    return 0


def _evaluate(args) -> int:
    from kidneyseg.batch import evaluate_folders
    from kidneyseg.evaluation import format_table

    per_case, paths = evaluate_folders(args.pred_dir, args.gt_dir, args.out or args.pred_dir)
    print(format_table(per_case))
    print(f"scores written to {paths[0]} and {paths[1]}")
    return 0


def _demo(args) -> int:
    from kidneyseg.demo import run_demo

    _positive(args.cases, "--cases")
    _positive(args.heldout, "--heldout")
    run_demo(args.out, cases=args.cases, heldout=args.heldout, minutes=args.minutes, seed=args.seed,
             overrides=tuple(args.overrides))
    return 0


def _shard(text: str) -> tuple[int, int]:
    index, sep, count = text.partition("/")
    if not sep or not index.isdigit() or not count.isdigit() or not 1 <= int(index) <= int(count):
        raise argparse.ArgumentTypeError(f"expected K/N with 1 <= K <= N, got {text!r}")
    return int(index), int(count)


def _positive(value: int, name: str) -> None:
    if value < 1:
        raise UsageError(f"{name} must be at least 1, got {value}")


_COMMANDS = {"check": _check, "synth": _synth, "train": _train, "predict": _predict, "export": _export,
             "evaluate": _evaluate, "demo": _demo}

if __name__ == "__main__":
    sys.exit(main())
