"""The command table: each command's arguments, and what it runs (the API function of the same
name, then printing its result). Nothing heavy is imported until a command runs, so `--help`
and bad options answer at once."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

from ..config import COMPARE_OWNED, RUNTIMES, RunConfig
from ..errors import TransferlabError
from .parser import arg, stderr

RUN = "a run directory written by `transferlab train`"
PATHS = "image files, folders (searched recursively) or quoted globs"
LAYER = "module name, stage-K or Keras name (see `transferlab layers`)"
FORCE = arg("--force", action="store_true", help="replace the file given if it exists (never a run's own files)")
RUNTIME = arg("--runtime", choices=RUNTIMES, help="where the network runs: onnx (onnxruntime, the CPU's fast one), "
              "torch, or auto (default: onnx on a CPU when its graph is kept or pays back its export)")


@dataclass
class Command:
    name: str
    help: str
    run: Callable[[argparse.Namespace, bool], None]
    arguments: list = field(default_factory=list)
    description: str = ""
    run_options: tuple[str, ...] | None = None  # takes every RunConfig key as an option, but these


COMMANDS: list[Command] = []


def command(name: str, help: str, arguments: list = (), description: str = "",
            run_options: tuple[str, ...] | None = None):
    def register(run: Callable[[argparse.Namespace, bool], None]):
        COMMANDS.append(Command(name, help, run, list(arguments), description, run_options))
        return run
    return register


@command("train", "train on an image folder, a CSV or a demo set; writes runs/<name>/",
         description="Train a classifier and write a run directory.", run_options=("data",), arguments=[
             arg("data", nargs="?", help="folder with one sub-folder per class (train/ val/ test/ split folders "
                 "are used if present), a .csv of path,label[,split], or 'digits'"),
             arg("--config", help="YAML file of run options (same keys); options given here override it"),
             arg("--resume", metavar="RUN", help="continue an interrupted run from its last complete epoch"),
             arg("--replay", metavar="RUN", help="refit a finished auto run's plan (its plan.json: candidates, "
                 "epochs, ensemble) on its data into a new run, no budget deciding: the same probabilities"),
             arg("--devices", type=int, metavar="N", help="data-parallel on N processes (one per GPU, or CPU "
                 "processes with gloo): starts `torchrun --nproc-per-node N -m transferlab train ...`")])
def train(args: argparse.Namespace, progress: bool) -> None:
    given = {f.name: getattr(args, f.name) for f in fields(RunConfig) if getattr(args, f.name, None) is not None}
    if args.resume or args.replay:
        if args.resume and args.replay:
            raise TransferlabError("--resume continues an interrupted run, --replay refits a finished one: give one")
        from ..api import train as run_train

        run = run_train(resume=args.resume, replay=args.replay, progress=progress, started=args.started, **given)
    else:
        if "data" not in given and not args.config:
            raise TransferlabError("train needs DATA: a folder, a .csv file, a CIFAR archive or 'digits'")
        base = RunConfig.from_yaml(args.config).to_dict() if args.config else {}
        # Checked here, before PyTorch is imported: a wrong option fails in a fraction of a second.
        config = RunConfig.from_dict({**base, **given}, origin="options").refuse_unused()
        from ..api import train as run_train

        run = run_train(config=config, progress=progress, started=args.started)
    if run.path is not None:  # ranks other than 0 of a data-parallel run write nothing
        print(f"{_score_line(run.metrics)}  run: {run.path}")


def _score_line(metrics: dict) -> str:
    """"test accuracy 0.9300 (95% CI 0.862-0.966)", from a run's metrics."""
    from ..inference.metrics import accuracy_text

    return f"{metrics['score_split']} {accuracy_text(metrics[metrics['score_split']])}"


@command("lr-find", "sweep the learning rate and plot loss against it; prints the suggested rates",
         description="An exponential learning-rate sweep over a few hundred steps of the first phase that "
                     "would train (the head's rate; other groups keep their ratio), on a copy of the network "
                     "and the images `train` would train on with the same options. Writes the plot and prints "
                     "the suggestions (steepest, valley, minimum); `train --lr find` uses the valley. The "
                     "strategy defaults to finetune.",
         run_options=("data", "lr", "folds", "tta", "tensorboard", "out", "name"), arguments=[
             arg("data", nargs="?", help="folder, .csv, CIFAR archive or 'digits', as for train"),
             arg("--config", help="YAML file of run options (same keys as train); options given here override it"),
             arg("--plot", default="lr_find.png", help="PNG of the sweep to write (default lr_find.png)"),
             arg("--start-lr", type=float, default=1e-7, help="first rate of the sweep (default 1e-7)"),
             arg("--end-lr", type=float, default=10.0, help="last rate of the sweep (default 10)"),
             arg("--steps", type=int, default=200, help="steps of the sweep (default 200; it ends early once "
                 "the loss diverges)"), FORCE])
def lr_find(args: argparse.Namespace, progress: bool) -> None:
    given = {f.name: getattr(args, f.name) for f in fields(RunConfig) if getattr(args, f.name, None) is not None}
    if "data" not in given and not args.config:
        raise TransferlabError("lr-find needs DATA: a folder, a .csv file, a CIFAR archive or 'digits'")
    if not (0 < args.start_lr < args.end_lr) or args.steps < 10:
        raise TransferlabError(f"--start-lr {args.start_lr}, --end-lr {args.end_lr}, --steps {args.steps}: give "
                               "0 < start < end and at least 10 steps")
    base = RunConfig.from_yaml(args.config).to_dict() if args.config else {"strategy": "finetune"}
    config = RunConfig.from_dict({**base, **given, "lr": "find"}, origin="options")  # checked before torch loads
    from ..api import lr_find as run_lr_find

    result = run_lr_find(config=config, plot=args.plot, start_lr=args.start_lr, end_lr=args.end_lr,
                         steps=args.steps, force=args.force, progress=progress)
    swept = f"{result.rates[0]:.2g} to {result.rates[-1]:.2g}"
    print(f"swept {len(result.rates)} steps of phase {result.phase}, rates {swept}")
    for name, rate in result.suggestions.items():
        print(f"  {name:<9s} {rate:.3g}" + ("  (what --lr find uses)" if name == "valley" else ""))
    print(f"plot: {args.plot}")


@command("evaluate", "score a saved run on labelled data",
         description="Score a saved run on labelled data with the same class names.", arguments=[
             arg("run", help=RUN), arg("data", help="folder, .csv or demo set with the run's class names"),
             arg("--split", choices=("train", "val", "test"),
                 help="which split of DATA (default: its held-out split, or all of it)"),
             arg("--tta", action="store_true", help="average each image's ten views (centre and corner crops, "
                                                    "mirrored)"),
             arg("--json", help="also write the metrics to this JSON file"), RUNTIME, FORCE])
def evaluate(args: argparse.Namespace, progress: bool) -> None:
    from ..api import evaluate as run_evaluate
    from ..common.atomic import write_json
    from ..common.run_files import claim_output

    if args.json:
        claim_output(args.json, args.force)
    metrics = run_evaluate(args.run, args.data, args.split, progress=progress, tta=args.tta, runtime=args.runtime)
    if args.json:
        write_json(Path(args.json), metrics, overwrite=args.force)
    from ..inference.metrics import accuracy_text

    print(f"{accuracy_text(metrics)} on {metrics['n']} images")


@command("backbones", "list backbone names (timm), with wildcards",
         description="List backbone names. Those marked 'offline' have packaged weights.", arguments=[
             arg("pattern", nargs="?", default="*", help="shell-style wildcard, e.g. 'resnet*' (default *)"),
             arg("--pretrained", action="store_true", help="only backbones with pretrained weights"),
             arg("--offline", action="store_true",
                 help="only backbones that work without a network (packaged weights, or made to train from scratch)")])
def backbones(args: argparse.Namespace, progress: bool) -> None:
    from ..models.backbones import list_backbones, trains_from_scratch
    from ..models.weights import PACKAGED

    names = list_backbones(args.pattern, pretrained=args.pretrained, offline=args.offline)
    if not names:
        raise TransferlabError(f"no backbone matches '{args.pattern}': try a wider pattern such as "
                               f"'*{args.pattern.strip('*')[:4]}*'")
    for name in names:
        note = ("  (offline weights)" if name in PACKAGED else "  (trains from scratch)" if args.offline
                and trains_from_scratch(name) else "")
        print(name + note)


@command("predict", "classify image files, folders or globs with a saved run",
         description="Top-k classes with probabilities for each image; unreadable files are listed, not fatal.",
         arguments=[arg("run", help=RUN), arg("paths", nargs="+", help=PATHS),
                    arg("--top-k", type=int, default=3, help="classes per image (default 3; more than the run "
                        "has shows all of them)"),
                    arg("--format", default="table", choices=("table", "csv", "json"),
                        help="output format (default table)"),
                    arg("--output", help="write to this file instead of the screen"),
                    arg("--tta", action="store_true", help="average ten views (centre and corner crops, mirrored)"),
                    arg("--reject", action="store_true", help="answer 'unknown' for an image of no class the run "
                        "knows (farther from every training image than the run's threshold), with its distance"),
                    RUNTIME, arg("--cache-dir", help="where the network's onnxruntime graph is kept (default "
                                 "$TRANSFERLAB_CACHE or ~/.cache/transferlab)"), FORCE])
def predict(args: argparse.Namespace, progress: bool) -> None:
    from ..common.atomic import write_text
    from ..common.run_files import claim_output
    from ..inference.predict import predict as run_predict
    from ..inference.predict import render

    if args.output:
        claim_output(args.output, args.force)
    result = run_predict(args.run, args.paths, args.top_k, args.tta, progress=progress,
                         runtime=args.runtime or "auto", cache_dir=args.cache_dir, reject=args.reject)
    for line in result["unreadable"]:
        stderr(f"unreadable: {line}")
    if not result["predictions"]:
        raise TransferlabError(f"none of the {len(result['unreadable'])} image(s) could be read: see the "
                               "unreadable files above")
    text = render(result, args.format)
    if args.output:
        write_text(Path(args.output), text, overwrite=args.force)
        print(f"{len(result['predictions'])} predictions written to {args.output}")
    else:
        print(text, end="")


@command("export", "write a run's network as ONNX or TorchScript, checked against PyTorch",
         description="Export a run (softmax included; input 0..255 RGB pixels, normalised inside) with its "
                     "classes and preprocessing as metadata, then run the file and report its largest "
                     "difference from PyTorch.", arguments=[
             arg("run", help=RUN), arg("--format", default="onnx", choices=("onnx", "torchscript"), help="default onnx"),
             arg("--out", help="file to write (default RUN/model.onnx or RUN/model.pt)"),
             arg("--check-images", nargs="*", default=None, metavar="IMAGE",
                 help="real images to compare the export on, besides random pixels"),
             arg("--quantize", choices=("int8",), help="also quantize the ONNX file to int8 (static, QDQ; written "
                 "to RUN/model.int8.onnx): about 2.3x faster on a CPU, 0.6-0.8 points lower"),
             arg("--calibration", nargs="+", metavar="IMAGE", help="images to calibrate int8 on (files, folders "
                 "or globs; up to 256 are drawn; default the run's own data folder)"), FORCE])
def export(args: argparse.Namespace, progress: bool) -> None:
    from ..inference.export import export as run_export

    result = run_export(args.run, args.format, args.out, args.check_images, force=args.force,
                        quantize=args.quantize, calibration=args.calibration)
    agreement = result.get("top1_agreement")
    print(f"{result['format']}{' int8' if args.quantize else ''} written to {result['path']} ({result['exporter']}); "
          f"largest probability difference from PyTorch {result['max_abs_diff']:.2g} over "
          f"{result['inputs_checked']} inputs" + (f"; top class kept on {agreement:.1%} of the calibration images"
                                                  if agreement is not None else ""))


@command("serve", "serve a run over HTTP: /predict, /explain (Grad-CAM), /metadata, /health, a page at /",
         description="An HTTP API and a page to try the run in a browser. POST /predict takes images as "
                     "multipart files, JSON {\"images\": [base64, ...]} or an image/* body, with top_k and tta; "
                     "POST /explain returns a Grad-CAM overlay PNG. Concurrent requests are batched.",
         arguments=[arg("run", help=RUN),
                    arg("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this "
                        "machine only; 0.0.0.0 for every interface)"),
                    arg("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)"),
                    arg("--workers", type=int, default=1, help="processes, each with its own copy of the model "
                        "(default 1)"),
                    arg("--onnx", action="store_true", help="run the network with onnxruntime on the run's "
                        "ONNX export (exported and checked first if missing); Grad-CAM stays PyTorch"),
                    arg("--batch-size", type=int, default=8, help="most images run through the network "
                        "together (default 8; 1 turns batching off)"),
                    arg("--batch-wait-ms", type=float, default=5.0, help="how long an image waits for others "
                        "while more are arriving (default 5)"),
                    arg("--max-files", type=int, default=16, help="images per request (default 16)"),
                    arg("--max-mb", type=float, default=20.0, help="bytes per request, in MiB (default 20)"),
                    arg("--max-pixels", type=int, default=40_000_000, help="pixels per image, read from its "
                        "header before decoding (default 40000000)"),
                    arg("--threads", type=int, help="threads of the network in each worker (default: the "
                        "worker's share of the cores less one, left to decoding and HTTP)"),
                    RUNTIME, arg("--no-access-log", action="store_true", help="do not log each request")])
def serve(args: argparse.Namespace, progress: bool) -> None:
    from ..serving.server import serve as run_serve
    from ..serving.uploads import Limits

    limits = Limits(args.max_files, int(args.max_mb * 2**20), args.max_pixels)
    run_serve(args.run, args.host, args.port, args.workers, args.onnx, args.batch_size, args.batch_wait_ms,
              limits, access_log=not args.no_access_log, threads=args.threads, runtime=args.runtime or "auto")


@command("explain", "Grad-CAM: where in each image the run saw the evidence for its class",
         description="Grad-CAM heatmaps over each image for the predicted class (or --class), saved as PNGs "
                     "and one grid; unreadable files are listed, not fatal.", arguments=[
             arg("run", help=RUN), arg("paths", nargs="+", help=PATHS),
             arg("--layer", help="layer to explain: module name, stage-K or Keras name (default: the last stage, "
                 "or at small input sizes the deepest one with enough cells; see `transferlab layers`)"),
             arg("--class", dest="class_name", metavar="NAME", help="explain this class instead of the predicted one"),
             arg("--out", help="folder for the PNGs (default RUN/explain)"),
             arg("--alpha", type=float, default=0.45, help="heatmap opacity over the image (default 0.45)")])
def explain(args: argparse.Namespace, progress: bool) -> None:
    from ..explain.commands import GRID_LIMIT
    from ..explain.commands import explain as run_explain

    result = run_explain(args.run, args.paths, args.layer, args.class_name, args.out, args.alpha)
    for item in result["images"]:
        print(f"{item['path']}  {item['class']} {item['probability']:.3f}  -> {item['png']}")
    for line in result["unreadable"]:
        stderr(f"unreadable: {line}")
    if not result["grid"]:
        raise TransferlabError("no readable image to explain: see the unreadable files above")
    shown = "" if len(result["images"]) <= GRID_LIMIT else f" (the first {GRID_LIMIT})"
    print(f"Grad-CAM at {result['layer']}: {len(result['images'])} image(s), grid{shown} {result['grid']}")


@command("filters", "what channels of a layer respond to: pictures grown by gradient ascent",
         description="For each of the first --count channels of --layer, an image grown from noise to excite "
                     "it (jitter, blur and decay regularise, coarse to fine), as a grid PNG.", arguments=[
             arg("model", metavar="BACKBONE|RUN", help="a timm backbone name or a run directory"),
             arg("--layer", required=True, help=LAYER),
             arg("--count", type=int, default=16, help="channels to show, from channel 0 (default 16)"),
             arg("--size", type=int, default=96, help="picture size in pixels (default 96)"),
             arg("--steps", type=int, default=60, help="gradient ascent steps (default 60)"),
             arg("--seed", type=int, default=0, help="seed of the starting noise (default 0)"),
             arg("--weights", default="auto", help="weights of a backbone name, as for train (default auto)"),
             arg("--out", help="PNG file to write (default RUN/filters-LAYER.png or BACKBONE-filters-LAYER.png)"),
             FORCE])
def filters(args: argparse.Namespace, progress: bool) -> None:
    from ..explain.commands import filters as run_filters

    result = run_filters(args.model, args.layer, args.count, args.size, args.steps, args.seed, args.out, args.weights,
                         force=args.force)
    start, final = sorted(result["start"]), sorted(result["final"])
    print(f"{result['channels']} channels of {result['layer']} -> {result['png']} (median mean activation "
          f"{start[len(start) // 2]:.3g} on the starting noise, {final[len(final) // 2]:.3g} on the picture)")


@command("activations", "the feature maps of one image at a layer, one tile per channel",
         description="Run one image to --layer and write its feature maps as a grid PNG.", arguments=[
             arg("model", metavar="RUN|BACKBONE", help="a run directory or a timm backbone name"),
             arg("image", help="one image file"), arg("--layer", required=True, help=LAYER),
             arg("--count", type=int, help="only the first COUNT channels (default all)"),
             arg("--weights", default="auto", help="weights of a backbone name, as for train (default auto)"),
             arg("--out", help="PNG file to write (default RUN/activations-IMAGE-LAYER.png)"), FORCE])
def activations(args: argparse.Namespace, progress: bool) -> None:
    from ..explain.commands import activations as run_activations

    result = run_activations(args.model, args.image, args.layer, args.count, args.out, args.weights,
                             force=args.force)
    h, w = result["map_size"]
    print(f"{result['channels']} maps of {h}x{w} at {result['layer']} -> {result['png']}")


@command("compare", "every config of a grid, once per seed: mean and std over seeds, intervals, a paired test",
         description="Run every config of a grid once per seed (resumable: finished runs are read back) and "
                     "write comparison.csv, comparison.md, a chart and report.html: each config's test accuracy "
                     "(mean, std, 95% interval) and, against the best, exact McNemar on the same test images. "
                     "Options of train given here override the grid's base; what each config sets still wins.",
         run_options=COMPARE_OWNED, arguments=[
             arg("data", help="folder, .csv, CIFAR archive or 'digits', as for train"),
             arg("--grid", required=True, help="YAML: base: {options}, grid: {key: [values]} (full product) "
                 "and/or configs: [{options}, ...]"),
             arg("--seeds", type=int, default=3, help="runs per config, seeds 0..N-1 (default 3)"),
             arg("--first-seed", type=int, default=0, help="the first seed (default 0)"),
             arg("--out", default="comparisons", help="folder for the comparison (default comparisons)"),
             arg("--name", help="comparison folder name (default DATA-GRIDNAME; the same name resumes)"),
             arg("--jobs", type=int, default=1, help="runs at a time, in worker processes: one GPU each when there "
                 "are GPUs, a share of the CPU cores otherwise (default 1: one process)")])
def compare(args: argparse.Namespace, progress: bool) -> None:
    from ..api import compare as run_compare
    from ..workflows.compare import markdown_table, paired_summary

    base = {f.name: getattr(args, f.name) for f in fields(RunConfig)
            if f.name not in COMPARE_OWNED and getattr(args, f.name, None) is not None}
    folds = base.pop("folds", 0)  # --folds also decides the ranking: api.compare takes it by name
    result = run_compare(args.data, args.grid, args.seeds, args.out, args.name, args.first_seed, progress, args.jobs,
                         base=base, folds=folds)
    print(markdown_table(result.rows, result.varied), end="")
    summary = paired_summary(result.rows, result.varied)
    if summary:
        print(summary)
    print(f"comparison: {result.path}")
    if not any(r["status"] == "ok" for r in result.rows):  # the table above still says why, row by row
        first = (result.rows[0]["error"].strip().splitlines() or ["no error recorded"])[0]
        raise TransferlabError(f"no config of the comparison succeeded ({len(result.rows)} failed; the first: "
                               f"{first}): each one's error is in {result.path / 'comparison.csv'}")


@command("audit", "duplicates, leakage across splits, label conflicts, class counts, odd images, label errors",
         description="Audit a data set on the splits train would make: exact duplicates (file content), "
                     "near-duplicates (backbone features, confirmed by pixels), copies that cross "
                     "train/val/test, duplicates with different labels, class counts, unreadable, tiny, huge, "
                     "odd-aspect and grayscale images; with --labels, the train and val images whose label "
                     "looks wrong. Prints a table and writes audit.json and audit.html (and label_issues.csv).",
         arguments=[
             arg("data", nargs="?", help="folder, .csv, CIFAR archive or 'digits', as for train "
                 "(default with --run: the run's data)"),
             arg("--threshold", type=float, help="cosine of backbone features at or above which two images are "
                 "near-duplicates on features alone (default 0.9)"),
             arg("--near", action=argparse.BooleanOptionalAction, default=True,
                 help="look for near-duplicates (runs the backbone once per image, features cached; "
                      "--no-near for the quick checks only)"),
             arg("--labels", action="store_true", help="also look for label errors in train and val: confident "
                 "learning on out-of-fold probabilities of the backbone's cached features; writes "
                 "label_issues.csv, which train --exclude and --relabel read back"),
             arg("--out", help="folder for audit.json and audit.html (default audits/DATA-NAME)"),
             arg("--run", help="audit this run's data and splits; also writes RUN/audit.json and an Audit "
                 "section in RUN/report.html"),
             arg("--val-fraction", type=float, help="as for train (default 0.15, or the run's)"),
             arg("--test-fraction", type=float, help="as for train (default 0.15, or the run's)"),
             arg("--seed", type=int, help="seed of the split, as for train (default 0, or the run's)"),
             arg("--classes", help="keep only these classes, comma-separated, as for train")])
def audit(args: argparse.Namespace, progress: bool) -> None:
    from ..api import audit as run_audit
    from ..audit.report import format_table

    result = run_audit(args.data, args.threshold, args.near, args.out, args.run, progress,
                       val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed,
                       classes=args.classes, labels=args.labels)
    print(format_table(result), end="")
    print("written: " + ", ".join(result["written"]))


@command("layers", "a backbone's layers: type, output shape, parameters, stage, Keras name",
         description="Every named module of a backbone, from one forward of a dummy image: what --layer "
                     "accepts and the stages --unfreeze counts.", arguments=[
             arg("backbone", help="timm model name (see `transferlab backbones`)"),
             arg("--input-size", type=int, help="input size in pixels (default: the backbone's)"),
             arg("--filter", help="shell-style wildcard on the layer name, type or Keras name, e.g. 'blocks.5*'"),
             arg("--unfreeze", default="1", help="mark what trains with this --unfreeze (default 1)")])
def layers(args: argparse.Namespace, progress: bool) -> None:
    from ..api import layers as run_layers
    from ..models.summary import format_rows

    table = format_rows(run_layers(args.backbone, args.input_size, args.unfreeze), args.filter)
    if table.count("\n") == 0:
        raise TransferlabError(f"--filter '{args.filter}' matches no layer of {args.backbone}: "
                               "try a wildcard such as '*conv*'")
    print(table)


@command("demo", "the packaged offline backbone + `features` on the digits demo set",
         description="Train the default backbone on scikit-learn's digits and print the score.",
         arguments=[arg("--out", default="runs", help="folder for the run directory (default runs)")])
def demo(args: argparse.Namespace, progress: bool) -> None:
    from ..api import demo as run_demo

    run = run_demo(out=args.out, progress=progress)
    print(f"digits demo: {_score_line(run.metrics)}  run: {run.path}")
