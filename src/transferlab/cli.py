"""The `transferlab` command: one thin sub-command per API function, sharing its option names."""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import sys
from dataclasses import fields

from .config import STRATEGIES, RunConfig
from .errors import TransferlabError
from .models.heads import HEAD_HELP

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
    d = RunConfig()
    g = p.add_argument_group("model")
    g.add_argument("--strategy", choices=STRATEGIES, help=f"how the pretrained network is reused (default {d.strategy})")
    g.add_argument("--backbone", help=f"timm model name (default {d.backbone}); see `transferlab backbones`")
    g.add_argument("--weights", help="auto (packaged offline weights, else the timm hub), hub, none (random), "
                                     "or a .safetensors / state-dict file (default auto)")
    g.add_argument("--head", help=f"{HEAD_HELP} (default {d.head}: logistic regression for `features`)")
    g.add_argument("--dropout", type=float, help=f"dropout in an MLP head (default {d.dropout})")
    g.add_argument("--image-size", dest="image_size", type=int, help="input size in pixels (default: the backbone's)")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, help=f"most epochs for a trained head (default {d.epochs})")
    g.add_argument("--patience", type=int, help=f"epochs without improvement before stopping (default {d.patience})")
    g.add_argument("--lr", type=float, help=f"learning rate (default {d.lr})")
    g.add_argument("--weight-decay", dest="weight_decay", type=float, help=f"(default {d.weight_decay})")
    g.add_argument("--batch-size", dest="batch_size", type=int, help=f"(default {d.batch_size})")
    g.add_argument("--seed", type=int, help=f"seed for splits and training (default {d.seed})")
    g = p.add_argument_group("data and output")
    g.add_argument("--val-fraction", dest="val_fraction", type=float,
                   help=f"share of the data for validation when it has no val split (default {d.val_fraction})")
    g.add_argument("--test-fraction", dest="test_fraction", type=float,
                   help=f"share held out for the score when it has no test or val split (default {d.test_fraction})")
    g.add_argument("--out", help=f"folder for run directories (default {d.out})")
    g.add_argument("--name", help="run directory name (default: DATA-STRATEGY-TIME)")
    g.add_argument("--no-feature-cache", dest="feature_cache", action="store_const", const=False,
                   help="do not read or write the on-disk feature cache")
    g.add_argument("--cache-dir", dest="cache_dir", help="feature cache folder (default $TRANSFERLAB_CACHE or ~/.cache/transferlab)")
    g.add_argument("--config", help="YAML file of run options; options given here override it")


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

    d = sub.add_parser("demo", help="the packaged offline backbone + `features` on the digits demo set",
                       description="Train the default backbone on scikit-learn's digits and print the score.")
    d.add_argument("--out", default="runs", help="folder for the run directory (default runs)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s",
                        stream=sys.stderr)
    try:
        return _run(args)
    except TransferlabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing half-written was kept", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    from . import api

    progress = not args.quiet
    if args.command == "train":
        base = RunConfig.from_yaml(args.config) if args.config else RunConfig()
        given = {f.name: getattr(args, f.name) for f in fields(RunConfig)
                 if getattr(args, f.name, None) is not None}
        if "data" not in given and not args.config:
            raise TransferlabError("train needs DATA: a folder, a .csv file, or 'digits'")
        run = api.train(config=base, progress=progress, **given)
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
    elif args.command == "demo":
        run = api.demo(out=args.out, progress=progress)
        print(f"digits demo: {run.metrics['score_split']} accuracy {run.score:.4f}  run: {run.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
