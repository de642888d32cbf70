"""The `transferlab` command: one thin sub-command per API function, sharing its option names."""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import sys
from dataclasses import fields
from pathlib import Path

from .config import RunConfig
from .errors import TransferlabError

log = logging.getLogger("transferlab")


class _Parser(argparse.ArgumentParser):
    """argparse that suggests the closest option when one is mistyped."""

    def error(self, message: str):
        if message.startswith("unrecognized arguments:"):
            # argparse reports sub-command options from the top parser: look in every parser.
            parsers = [self] + [p for a in self._actions if isinstance(a, argparse._SubParsersAction)
                                for p in a.choices.values()]
            known = [s for p in parsers for a in p._actions for s in a.option_strings if s.startswith("--")]
            for word in message.split(":", 1)[1].split():
                close = difflib.get_close_matches(word.split("=")[0], known, n=1)
                if close:
                    message += f" (did you mean {close[0]}?)"
                    break
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _add_train_options(p: argparse.ArgumentParser) -> None:
    """One option per RunConfig key, named like it (--weight-decay is weight_decay)."""
    d = RunConfig()
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in fields(RunConfig):
        if f.name == "data":
            continue
        group = f.metadata.get("group", "training")
        if group not in groups:
            groups[group] = p.add_argument_group(group)
        flag = "--" + f.name.replace("_", "-")
        default = getattr(d, f.name)
        text = f.metadata.get("help", "") + (f" (default {default})" if default not in (None, "") else "")
        kind = str(f.type)
        kwargs: dict = {"dest": f.name, "help": text, "default": None}
        if "bool" in kind:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = int if kind.startswith("int") else float if kind.startswith("float") else str
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
            kwargs["metavar"] = f.name.upper().replace("_", "-") if "choices" not in kwargs else None
        groups[group].add_argument(flag, **kwargs)
    p.add_argument("--config", help="YAML file of run options (same keys); options given here override it")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its last complete epoch")
    p.add_argument("--devices", type=int, metavar="N", help="data-parallel on N processes (one per GPU, or CPU "
                   "processes with gloo): starts `torchrun --nproc-per-node N -m transferlab train ...`")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="transferlab", description="Transfer learning on small image data sets.")
    p.add_argument("-q", "--quiet", action="store_true", help="print only results and errors")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    t = sub.add_parser("train", help="train on an image folder, a CSV or a demo set; writes runs/<name>/",
                       description="Train a classifier and write a run directory.")
    t.add_argument("data", nargs="?", help="folder with one sub-folder per class (train/ val/ test/ "
                   "split folders are used if present), a .csv of path,label[,split], or 'digits'")
    _add_train_options(t)

    e = sub.add_parser("evaluate", help="score a saved run on labelled data",
                       description="Score a saved run on labelled data with the same class names.")
    e.add_argument("run", help="a run directory written by `transferlab train`")
    e.add_argument("data", help="folder, .csv or demo set with the run's class names")
    e.add_argument("--split", choices=("train", "val", "test"), help="which split of DATA (default: its held-out split, or all of it)")
    e.add_argument("--json", help="also write the metrics to this JSON file")

    b = sub.add_parser("backbones", help="list backbone names (timm), with wildcards",
                       description="List backbone names. Those marked 'offline' have packaged weights.")
    b.add_argument("pattern", nargs="?", default="*", help="shell-style wildcard, e.g. 'resnet*' (default *)")
    b.add_argument("--pretrained", action="store_true", help="only backbones with pretrained weights")

    pr = sub.add_parser("predict", help="classify image files, folders or globs with a saved run",
                        description="Top-k classes with probabilities for each image; unreadable files are "
                                    "listed, not fatal.")
    pr.add_argument("run", help="a run directory written by `transferlab train`")
    pr.add_argument("paths", nargs="+", help="image files, folders (searched recursively) or quoted globs")
    pr.add_argument("--top-k", type=int, default=3, help="classes per image (default 3)")
    pr.add_argument("--format", default="table", choices=("table", "csv", "json"), help="output format (default table)")
    pr.add_argument("--output", help="write to this file instead of the screen")
    pr.add_argument("--tta", action="store_true", help="average ten views (centre and corner crops, mirrored)")

    x = sub.add_parser("export", help="write a run's network as ONNX or TorchScript, checked against PyTorch",
                       description="Export a run (softmax included; input 0..255 RGB pixels, normalised inside) "
                                   "with its classes and preprocessing as metadata, then run the file and "
                                   "report its largest difference from PyTorch.")
    x.add_argument("run", help="a run directory written by `transferlab train`")
    x.add_argument("--format", default="onnx", choices=("onnx", "torchscript"), help="default onnx")
    x.add_argument("--out", help="file to write (default RUN/model.onnx or RUN/model.pt)")
    x.add_argument("--check-images", nargs="*", default=None, metavar="IMAGE",
                   help="real images to compare the export on, besides random pixels")

    ex = sub.add_parser("explain", help="Grad-CAM: where in each image the run saw the evidence for its class",
                        description="Grad-CAM heatmaps over each image for the predicted class (or --class), "
                                    "saved as PNGs and one grid; unreadable files are listed, not fatal.")
    ex.add_argument("run", help="a run directory written by `transferlab train`")
    ex.add_argument("paths", nargs="+", help="image files, folders (searched recursively) or quoted globs")
    ex.add_argument("--layer", help="layer to explain: module name, stage-K or Keras name (default: the last "
                    "stage, or at small input sizes the deepest one with enough cells; see `transferlab layers`)")
    ex.add_argument("--class", dest="class_name", metavar="NAME", help="explain this class instead of the predicted one")
    ex.add_argument("--out", help="folder for the PNGs (default RUN/explain)")
    ex.add_argument("--alpha", type=float, default=0.45, help="heatmap opacity over the image (default 0.45)")

    fi = sub.add_parser("filters", help="what channels of a layer respond to: pictures grown by gradient ascent",
                        description="For each of the first --count channels of --layer, an image grown from noise "
                                    "to excite it (jitter, blur and decay regularise, coarse to fine), as a grid PNG.")
    fi.add_argument("model", metavar="BACKBONE|RUN", help="a timm backbone name or a run directory")
    fi.add_argument("--layer", required=True, help="module name, stage-K or Keras name (see `transferlab layers`)")
    fi.add_argument("--count", type=int, default=16, help="channels to show, from channel 0 (default 16)")
    fi.add_argument("--size", type=int, default=96, help="picture size in pixels (default 96)")
    fi.add_argument("--steps", type=int, default=60, help="gradient ascent steps (default 60)")
    fi.add_argument("--seed", type=int, default=0, help="seed of the starting noise (default 0)")
    fi.add_argument("--weights", default="auto", help="weights of a backbone name, as for train (default auto)")
    fi.add_argument("--out", help="PNG file to write (default RUN/filters-LAYER.png or BACKBONE-filters-LAYER.png)")

    ac = sub.add_parser("activations", help="the feature maps of one image at a layer, one tile per channel",
                        description="Run one image to --layer and write its feature maps as a grid PNG.")
    ac.add_argument("model", metavar="RUN|BACKBONE", help="a run directory or a timm backbone name")
    ac.add_argument("image", help="one image file")
    ac.add_argument("--layer", required=True, help="module name, stage-K or Keras name (see `transferlab layers`)")
    ac.add_argument("--count", type=int, help="only the first COUNT channels (default all)")
    ac.add_argument("--weights", default="auto", help="weights of a backbone name, as for train (default auto)")
    ac.add_argument("--out", help="PNG file to write (default RUN/activations-IMAGE-LAYER.png)")

    c = sub.add_parser("compare", help="every config of a grid, once per seed: mean and std over seeds",
                       description="Run every config of a grid once per seed (resumable: finished runs are "
                                   "read back) and write comparison.csv, comparison.md, a chart and report.html.")
    c.add_argument("data", help="folder, .csv, CIFAR archive or 'digits', as for train")
    c.add_argument("--grid", required=True, help="YAML: base: {options}, grid: {key: [values]} (full product) "
                   "and/or configs: [{options}, ...]")
    c.add_argument("--seeds", type=int, default=3, help="runs per config, seeds 0..N-1 (default 3)")
    c.add_argument("--first-seed", type=int, default=0, help="the first seed (default 0)")
    c.add_argument("--out", default="comparisons", help="folder for the comparison (default comparisons)")
    c.add_argument("--name", help="comparison folder name (default DATA-GRIDNAME; the same name resumes)")
    c.add_argument("--jobs", type=int, default=1, help="runs at a time, in worker processes: one GPU each "
                   "when there are GPUs, a share of the CPU cores otherwise (default 1: one process)")

    au = sub.add_parser("audit", help="duplicates, leakage across splits, label conflicts, class counts, odd images",
                        description="Audit a data set on the splits train would make: exact duplicates (file "
                                    "content), near-duplicates (backbone features, confirmed by pixels), copies "
                                    "that cross train/val/test, duplicates with different labels, class counts, "
                                    "unreadable, tiny, huge, odd-aspect and grayscale images. Prints a table and "
                                    "writes audit.json and audit.html.")
    au.add_argument("data", nargs="?", help="folder, .csv, CIFAR archive or 'digits', as for train "
                    "(default with --run: the run's data)")
    au.add_argument("--threshold", type=float, help="cosine of backbone features at or above which two images "
                    "are near-duplicates on features alone (default 0.9)")
    au.add_argument("--near", action=argparse.BooleanOptionalAction, default=True,
                    help="look for near-duplicates (runs the backbone once per image, features cached; "
                         "--no-near for the quick checks only)")
    au.add_argument("--out", help="folder for audit.json and audit.html (default audits/DATA-NAME)")
    au.add_argument("--run", help="audit this run's data and splits; also writes RUN/audit.json and an Audit "
                    "section in RUN/report.html")
    au.add_argument("--val-fraction", type=float, help="as for train (default 0.15, or the run's)")
    au.add_argument("--test-fraction", type=float, help="as for train (default 0.15, or the run's)")
    au.add_argument("--seed", type=int, help="seed of the split, as for train (default 0, or the run's)")
    au.add_argument("--classes", help="keep only these classes, comma-separated, as for train")

    lay = sub.add_parser("layers", help="a backbone's layers: type, output shape, parameters, stage, Keras name",
                         description="Every named module of a backbone, from one forward of a dummy image: "
                                     "what --layer accepts and the stages --unfreeze counts.")
    lay.add_argument("backbone", help="timm model name (see `transferlab backbones`)")
    lay.add_argument("--input-size", type=int, help="input size in pixels (default: the backbone's)")
    lay.add_argument("--filter", help="shell-style wildcard on the layer name, type or Keras name, e.g. 'blocks.5*'")
    lay.add_argument("--unfreeze", default="1", help="mark what trains with this --unfreeze (default 1)")

    d = sub.add_parser("demo", help="the packaged offline backbone + `features` on the digits demo set",
                       description="Train the default backbone on scikit-learn's digits and print the score.")
    d.add_argument("--out", default="runs", help="folder for the run directory (default runs)")
    return p


def _without_devices(argv: list[str]) -> list[str]:
    out, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word == "--devices":
            skip = True
        elif not word.startswith("--devices="):
            out.append(word)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if int(os.environ.get("RANK", 0)) > 0:
        args.quiet = True  # under torchrun, rank 0 speaks for all
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s",
                        stream=sys.stderr)
    try:
        if args.command == "train" and args.devices is not None and "WORLD_SIZE" not in os.environ:
            from .distributed import launch

            if args.devices != 1:
                return launch(args.devices, _without_devices(argv))
        return _run(args)
    except TransferlabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing half-written was kept", file=sys.stderr)
        return 130
    finally:
        if "transferlab.distributed" in sys.modules:
            sys.modules["transferlab.distributed"].shutdown()


def _run(args: argparse.Namespace) -> int:
    from . import api

    progress = not args.quiet
    if args.command == "train":
        given = {f.name: getattr(args, f.name) for f in fields(RunConfig)
                 if getattr(args, f.name, None) is not None}
        if args.resume:
            run = api.train(resume=args.resume, progress=progress, **given)
        else:
            base = RunConfig.from_yaml(args.config) if args.config else RunConfig()
            if "data" not in given and not args.config:
                raise TransferlabError("train needs DATA: a folder, a .csv file, a CIFAR archive or 'digits'")
            run = api.train(config=base, progress=progress, **given)
        if run.path is not None:  # ranks other than 0 of a data-parallel run write nothing
            print(f"{run.metrics['score_split']} accuracy {run.score:.4f}  run: {run.path}")
    elif args.command == "evaluate":
        metrics = api.evaluate(args.run, args.data, args.split, progress=progress)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(metrics, fh, indent=2)
        print(f"accuracy {metrics['accuracy']:.4f} on {metrics['n']} images")
    elif args.command == "backbones":
        from .models.backbones import list_backbones
        from .models.weights import PACKAGED

        names = list_backbones(args.pattern, pretrained=args.pretrained)
        if not names:
            raise TransferlabError(f"no backbone matches '{args.pattern}': try a wider pattern such as '*{args.pattern.strip('*')[:4]}*'")
        for name in names:
            print(f"{name}  (offline weights)" if name in PACKAGED else name)
    elif args.command == "predict":
        from .predict import predict, render

        result = predict(args.run, args.paths, args.top_k, args.tta, progress=progress)
        text = render(result, args.format)
        if args.output:
            from .runs import write_text

            write_text(Path(args.output), text)
            print(f"{len(result['predictions'])} predictions written to {args.output}")
        else:
            print(text, end="")
        for line in result["unreadable"]:
            print(f"unreadable: {line}", file=sys.stderr)
    elif args.command == "export":
        from .export import export

        result = export(args.run, args.format, args.out, args.check_images)
        print(f"{result['format']} written to {result['path']} ({result['exporter']}); largest probability "
              f"difference from PyTorch {result['max_abs_diff']:.2g} over {result['inputs_checked']} inputs")
    elif args.command == "explain":
        from .explain.commands import explain

        result = explain(args.run, args.paths, args.layer, args.class_name, args.out, args.alpha)
        for item in result["images"]:
            print(f"{item['path']}  {item['class']} {item['probability']:.3f}  -> {item['png']}")
        for line in result["unreadable"]:
            print(f"unreadable: {line}", file=sys.stderr)
        if result["grid"]:
            from .explain.commands import GRID_LIMIT

            shown = "" if len(result["images"]) <= GRID_LIMIT else f" (the first {GRID_LIMIT})"
            print(f"Grad-CAM at {result['layer']}: {len(result['images'])} image(s), grid{shown} {result['grid']}")
        else:
            raise TransferlabError("no readable image to explain: see the unreadable files above")
    elif args.command == "filters":
        from .explain.commands import filters

        result = filters(args.model, args.layer, args.count, args.size, args.steps, args.seed, args.out,
                         args.weights)
        start, final = sorted(result["start"]), sorted(result["final"])
        print(f"{result['channels']} channels of {result['layer']} -> {result['png']} (median mean activation "
              f"{start[len(start) // 2]:.3g} on the starting noise, {final[len(final) // 2]:.3g} on the picture)")
    elif args.command == "activations":
        from .explain.commands import activations

        result = activations(args.model, args.image, args.layer, args.count, args.out, args.weights)
        h, w = result["map_size"]
        print(f"{result['channels']} maps of {h}x{w} at {result['layer']} -> {result['png']}")
    elif args.command == "compare":
        from .comparison import markdown_table

        result = api.compare(args.data, args.grid, args.seeds, args.out, args.name, args.first_seed, progress,
                             args.jobs)
        print(markdown_table(result.rows, result.columns[:result.columns.index("test_accuracy_mean")]), end="")
        print(f"comparison: {result.path}")
    elif args.command == "audit":
        from .audit.report import format_table

        result = api.audit(args.data, args.threshold, args.near, args.out, args.run, progress,
                           val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed,
                           classes=args.classes)
        print(format_table(result), end="")
        print("written: " + ", ".join(result["written"]))
    elif args.command == "layers":
        from .models.summary import format_rows

        rows = api.layers(args.backbone, args.input_size, args.unfreeze)
        table = format_rows(rows, args.filter)
        if table.count("\n") == 0:
            raise TransferlabError(f"--filter '{args.filter}' matches no layer of {args.backbone}: "
                                   "try a wildcard such as '*conv*'")
        print(table)
    elif args.command == "demo":
        run = api.demo(out=args.out, progress=progress)
        print(f"digits demo: {run.metrics['score_split']} accuracy {run.score:.4f}  run: {run.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
