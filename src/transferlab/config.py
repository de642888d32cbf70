"""The run configuration: flat dataclasses whose keys are the CLI options, the API arguments and
the keys of config.yaml. `FitOptions` are how a classifier is fitted (ImageClassifier's
parameters); `RunConfig` adds where the data comes from and where the run is written. A value
left at None is chosen by the strategy (training.strategies.resolve) and the chosen value is what
config.yaml records. `validate` checks every option, before any data or weights load."""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from .common.run_files import yaml_error
from .errors import TransferlabError
from .models.heads import HEAD_HELP, parse_branch_dropout, parse_head
from .models.registry import DEFAULT_BACKBONE, WEIGHT_SOURCES
from .strategy_registry import NAMES, strategy

# Keys a comparison decides itself: every run of it lands in its own folder with its own seed.
COMPARE_OWNED = ("data", "seed", "out", "name")
# Options with a fixed set of values; validate() checks them before any data or weights load.
STRATEGIES = NAMES
OPTIMIZERS = ("adamw", "sgd", "adam", "rmsprop")
SCHEDULES = ("cosine", "constant", "step", "onecycle")
AUGMENT_PRESETS = ("none", "standard", "classic", "randaugment")
BALANCE = ("none", "weights", "sampler")
MONITORS = ("val_loss", "val_accuracy")
CIFAR_LABELS = ("fine", "coarse")
RESIZE_MODES = ("squash", "crop")
POOLINGS = ("avg", "bilinear")
RUNTIMES = ("auto", "torch", "onnx", "onnx-int8")  # where frozen passes run: runtime/frozen.py


def opt(default, help: str, group: str = "training", choices=None):
    return field(default=default, metadata={"help": help, "group": group, "choices": choices})


@dataclass(kw_only=True)
class FitOptions:
    strategy: str = opt("auto", "how the pretrained network is reused (auto: the best of several on validation, "
                                "within --budget minutes, default 20; features: one pass, a minute)", "model", STRATEGIES)
    backbone: str | None = opt(None, f"timm model name, or basenet / basenet-plus for scratch "
                                     f"(default {DEFAULT_BACKBONE}; see `transferlab backbones`); features: "
                                     "several, comma-separated, concatenate their features", "model")
    feature_views: int = opt(1, "features: 2 averages each image's features with its mirror image's", "model")
    pooling: str = opt("avg", "features: avg (the backbone's pooled features) or bilinear (signed-sqrt, "
                              "L2-normalised second-order pooling of --layer, cached like pooled features: "
                              "for fine-grained classes)", "model", POOLINGS)
    weights: str = opt("auto", "auto (packaged offline weights, else the timm hub), hub, none "
                               "(random), or a .safetensors / state-dict file", "model")
    head: str | None = opt(None, f"{HEAD_HELP} (default: linear; basenet mlp:512, basenet-plus "
                                 "mlp-bn:512,256)", "model")
    dropout: float | None = opt(None, "dropout before the head's last layer(s)", "model")
    image_size: int | None = opt(None, "input size in pixels (default: the backbone's; 32 for scratch)", "model")
    resize: str = opt("crop", "how an image becomes the square input: crop (shorter side resized, centre "
                              "cropped: timm's ImageNet view) or squash (the whole image resized to it, aspect "
                              "not kept, nothing of a wide object cut off; auto tries both)", "model", RESIZE_MODES)
    unfreeze: int | str | None = opt(None, "finetune, bilinear: how many last stages train in phase 2, or 'all' "
                                    "(`transferlab layers` shows the stages; default 3 for finetune, 1 for "
                                    "bilinear)", "model")
    reinit: int = opt(1, "reinit: how many last stages get fresh weights", "model")
    layer: str | None = opt(None, "bilinear (and features --pooling bilinear): the layer to tap, or two (A,B) "
                                  "for an asymmetric head; a module "
                                  "name, stage-1 (last stage), stage-2, ..., or a Keras name such as "
                                  "block5_conv3 (default: VGG block5_conv3, EfficientNet its last block "
                                  "stage, otherwise stage-1)", "bilinear")
    backbone2: str | None = opt(None, "bilinear: a second backbone; --layer A,B then taps B in it", "bilinear")
    weights2: str = opt("auto", "bilinear: weights of --backbone2 (same sources as --weights)", "bilinear")
    branch_dropout: str = opt("0", "bilinear: dropout on each branch before the outer product, one value "
                                   "or two (e.g. 0.5,0.5)", "bilinear")
    bilinear_reduce: int | None = opt(None, "bilinear: 1x1 convolution to this many channels first", "bilinear")
    sketch_dim: int | None = opt(None, "bilinear: compact pooling (Tensor Sketch) to this many features "
                                       "instead of C1*C2, e.g. 8192", "bilinear")
    backbone_lr_mult: float = opt(0.1, "finetune, bilinear: backbone learning rate as a fraction of the head's", "model")
    bn_update: bool = opt(False, "let unfrozen BatchNorm layers update their statistics", "model")

    epochs: int | None = opt(None, "epochs (finetune: of phase 2; early stopping may end sooner)")
    head_epochs: int | None = opt(None, "finetune, bilinear: epochs of phase 1, head only")
    lr: float | str | None = opt(None, "learning rate of the head (and of everything for scratch), or 'find': "
                                       "an LR sweep (`transferlab lr-find`) first, its suggestion used")
    lr_decay: float = opt(1.0, "finetune, bilinear: layer-wise rate decay per unfrozen stage below the last "
                               "(stage k from the top trains at lr x backbone-lr-mult x lr-decay^k; 1 = off)")
    unfreeze_schedule: str = opt("", "finetune, bilinear: gradual unfreezing, stages unfrozen per phase after the "
                                     "head phase, e.g. 1,2,4 (each phase --epochs / phases epochs, a fresh "
                                     "optimizer and schedule); replaces --unfreeze")
    ema: float = opt(0.0, "keep an exponential moving average of the weights with this decay (e.g. 0.999): "
                          "evaluation, the best epoch and the saved model use it (0 = off)")
    sizes: str = opt("", "progressive resizing: input sizes for successive shares of each phase's epochs, "
                         "ending at the network's input size, e.g. 160,224")
    accumulate: int = opt(1, "gradient accumulation: batches per optimizer step (an effective batch "
                             "N x --batch-size)")
    clip_grad: float = opt(0.0, "clip the gradient norm to this value before each step (0 = off)")
    optimizer: str | None = opt(None, "adamw, sgd, adam or rmsprop (default adamw; sgd for scratch)",
                                choices=OPTIMIZERS)
    weight_decay: float | None = opt(None, "weight decay (default 0.01 for adam(w), 5e-4 otherwise)")
    momentum: float = opt(0.9, "momentum for sgd and rmsprop")
    nesterov: bool = opt(False, "Nesterov momentum for sgd")
    schedule: str = opt("cosine", "learning-rate schedule: cosine, constant, step or onecycle",
                        choices=SCHEDULES)
    warmup_epochs: float | None = opt(None, "linear warm-up at the start of a phase (default 1 for finetune phase 2)")
    milestones: str = opt("", "step schedule: epochs where the rate drops, e.g. 25,50")
    gamma: float = opt(0.1, "step schedule: factor at each milestone")
    label_smoothing: float = opt(0.0, "label smoothing of the cross-entropy loss")
    balance: str = opt("none", "imbalanced classes: none, weights (loss weights) or sampler", "training",
                       BALANCE)
    monitor: str = opt("val_loss", "early stopping metric", "training", MONITORS)
    patience: int | None = opt(None, "epochs without improvement before stopping (default 10; 5 for finetune)")
    min_delta: float = opt(1e-4, "smallest change that counts as an improvement")
    batch_size: int = opt(32, "images per batch")
    budget: float | None = opt(None, "minutes the run may take: epochs end early to fit (plus at most one epoch)")
    logistic_c: float | None = opt(None, "features with a linear head: logistic regression's inverse L2 strength C "
                                         "(default: chosen by val log loss, or by 5-fold cross-validation without "
                                         "val)", "model")
    refit_full: bool = opt(False, "auto: refit the chosen trained candidates on train + val too (features ones "
                                  "always are, when the budget allows), for the epochs their first fit ran")
    keep_known: float = opt(0.95, "the share of known images `predict --reject` and `serve` keep: the threshold "
                                  "on an image's distance to its nearest training image (Lite0 features), read "
                                  "from held-out distances of the training images; 0: no unknown-image detector",
                            "model")
    prefix_cache: bool = opt(True, "run the frozen front of the network once per cached view instead of every epoch")
    cache_views: int = opt(2, "augmented views per training image in the prefix cache")
    cache_memory_mb: int = opt(2048, "memory for the prefix cache; beyond it the cache goes to disk")
    seed: int = opt(0, "seed for splits, order, augmentation and initialisation")

    augment: str | None = opt(None, "none, standard, classic (Keras-style shifts) or randaugment "
                                    "(default standard; classic for scratch)", "augmentation", AUGMENT_PRESETS)
    scale_min: float = opt(0.25, "standard/randaugment: smallest crop area fraction", "augmentation")
    width_shift: float = opt(0.1, "classic: horizontal shift as a fraction of the width", "augmentation")
    height_shift: float = opt(0.1, "classic: vertical shift as a fraction of the height", "augmentation")
    rotation: float = opt(15.0, "classic: rotation range in degrees", "augmentation")
    zoom: float = opt(0.1, "classic: zoom range (scale 1-zoom .. 1+zoom)", "augmentation")
    hflip: bool = opt(True, "random horizontal flips", "augmentation")
    magnitude: int = opt(9, "randaugment: magnitude", "augmentation")
    mixup: float = opt(0.0, "mixup alpha (0 = off)", "augmentation")
    cutmix: float = opt(0.0, "cutmix alpha (0 = off)", "augmentation")
    featurewise_norm: bool | None = opt(None, "normalise with the training set's own mean and std "
                                              "(default on for scratch)", "augmentation")

    feature_cache: bool = opt(True, "read and write the on-disk feature cache", "output")
    cache_dir: str | None = opt(None, "feature cache folder (default $TRANSFERLAB_CACHE or ~/.cache/transferlab)", "output")
    device: str = opt("auto", "auto, cpu or cuda[:N]", "output")
    runtime: str = opt("auto", "frozen passes: onnx (onnxruntime, the CPU's fast one), torch, auto (onnx on a "
                               "CPU when installed), or onnx-int8 (features through a statically quantized "
                               "graph: 2.3x faster, 0.6-0.8 points lower)", "output", RUNTIMES)
    amp: bool = opt(True, "mixed precision (bf16) on GPU", "output")
    compile: bool = opt(False, "torch.compile the network (GPU)", "output")


@dataclass(kw_only=True)
class RunConfig(FitOptions):
    data: str = opt("digits", "folder, .csv, CIFAR archive or 'digits'", "data")
    val_fraction: float = opt(0.15, "share for validation when the data has no val split (auto holds back its "
                                    "own 0.15 of each class and refits on all of train)", "data")
    test_fraction: float = opt(0.15, "share held out for the score when the data has no test or val split", "data")
    classes: str = opt("", "keep only these classes, comma-separated", "data")
    dedupe: bool = opt(False, "drop val/test images that are exact copies of images in an earlier split "
                              "(keeping the train copy); metrics.json lists them", "data")
    cifar_labels: str = opt("fine", "CIFAR-100: fine or coarse labels", "data", CIFAR_LABELS)
    exclude: str | None = opt(None, "a CSV with a path column (such as the label_issues.csv of `transferlab audit "
                                    "DATA --labels`): those images are left out of train and val (with an action "
                                    "column, the rows marked exclude); test is never changed", "data")
    relabel: str | None = opt(None, "a CSV of path,label (or label_issues.csv: the rows marked relabel get their "
                                    "suggested label): those train and val images get that label; test is never "
                                    "changed", "data")
    out: str = opt("runs", "folder for run directories", "output")
    name: str | None = opt(None, "run directory name (default DATA-STRATEGY-TIME)", "output")
    tensorboard: bool = opt(False, "also write TensorBoard event files (run/tensorboard/) each epoch", "output")
    folds: int = opt(0, "k-fold cross-validation on train (stratified, test untouched) before the final fit: "
                        "metrics.json reports each fold's validation accuracy and their mean +- std (0 = off)",
                     "data")
    tta: bool = opt(False, "score val and test with test-time augmentation: each image's probabilities "
                           "averaged over its centre and corner crops, mirrored (about 10x the scoring time)",
                    "output")

    def validate(self, check_files: bool = True) -> "RunConfig":
        """Every option checked; `check_files`: a configuration about to be used, so also that
        weights files exist and that no option would go unused (not when reading back a finished
        run, whose weights file may be long gone)."""
        def bad(option: str, why: str):
            raise TransferlabError(f"--{option.replace('_', '-')} {getattr(self, option)} {why}")

        for f in fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value is not None and value not in choices:
                close = difflib.get_close_matches(str(value), choices, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise TransferlabError(f"--{f.name.replace('_', '-')} '{value}' is not known{hint}: choose one "
                                       f"of {', '.join(choices)}")
        if self.head is not None:
            parse_head(self.head)
        for key in ("weights", "weights2") if check_files else ():
            value = getattr(self, key)
            if value not in WEIGHT_SOURCES and not Path(value).expanduser().is_file():
                raise TransferlabError(f"--{key} '{value}' is not a file and not one of {', '.join(WEIGHT_SOURCES)}: "
                                       "give a .safetensors or PyTorch state-dict file, or auto, hub or none")
        for key in ("exclude", "relabel") if check_files else ():
            value = getattr(self, key)
            if value is not None and not Path(str(value)).expanduser().is_file():
                bad(key, "is not a file: give a CSV with a path column, such as the label_issues.csv that "
                         "`transferlab audit DATA --labels` writes")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", str(self.device)):
            bad("device", "is not auto, cpu, cuda or cuda:N")
        for key in ("epochs", "head_epochs", "patience"):
            if getattr(self, key) is not None and int(getattr(self, key)) < (0 if key == "head_epochs" else 1):
                bad(key, "must be at least " + ("0" if key == "head_epochs" else "1"))
        if self.batch_size < 1:
            bad("batch_size", "must be at least 1")
        for key in ("val_fraction", "test_fraction"):  # auto does not cut val: checked here for it too
            if not 0 <= getattr(self, key) < 1:
                bad(key, "is outside [0, 1): give a fraction such as 0.15")
        if self.image_size is not None and not 8 <= int(self.image_size) <= 2048:
            bad("image_size", "is outside 8..2048 pixels")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            bad("dropout", "is outside [0, 1)")
        if self.weight_decay is not None and self.weight_decay < 0:
            bad("weight_decay", "must be positive")
        if self.lr is not None and self.lr != "find" and (not isinstance(self.lr, (int, float)) or self.lr <= 0):
            bad("lr", "must be a positive number, or find (an LR sweep first)")
        if not 0 < self.lr_decay <= 1:
            bad("lr_decay", "is outside (0, 1]: 1 is off, 0.7 a typical layer-wise decay")
        kind = strategy(self.strategy)
        if (self.lr_decay != 1 or self.unfreeze_schedule) and not kind.unfreezes_stages:
            bad("lr_decay" if self.lr_decay != 1 else "unfreeze_schedule",
                "is for --strategy finetune or bilinear, which unfreeze backbone stages")
        self.unfreeze_steps()
        if not 0 <= self.ema < 1:
            bad("ema", "is outside [0, 1): 0 is off, 0.999 a typical decay")
        if self.sizes and not kind.pixels:
            bad("sizes", "is for strategies that train on pixels (frozen, finetune, reinit, bilinear, scratch)")
        self.size_list()
        if self.accumulate < 1:
            bad("accumulate", "must be at least 1 batch per step")
        if self.clip_grad < 0:
            bad("clip_grad", "must be 0 (off) or a positive gradient norm")
        if self.folds == 1 or self.folds < 0:
            bad("folds", "must be 0 (off) or at least 2")
        if not 0 <= self.label_smoothing < 1:
            bad("label_smoothing", "is outside [0, 1)")
        if self.unfreeze not in (None, "all") and not (isinstance(self.unfreeze, int) and self.unfreeze >= 1):
            bad("unfreeze", "is not a number of stages (1 or more) or 'all'")
        if self.name is not None and (not str(self.name).strip() or Path(str(self.name)).name != str(self.name)
                                      or str(self.name) in (".", "..")):
            bad("name", "is not a folder name: give a name without '/' (the run goes into --out)")
        if self.budget is not None and self.budget <= 0:
            bad("budget", "must be a positive number of minutes")
        if not 0 <= self.keep_known <= 1:
            bad("keep_known", "must be a share in [0, 1], e.g. 0.95 (0: no unknown-image detector)")
        if self.logistic_c is not None and not self.logistic_c > 0:
            bad("logistic_c", "must be a positive number (larger: less regularised)")
        if self.cache_views < 1:
            bad("cache_views", "must be at least 1")
        if self.feature_views not in (1, 2):
            bad("feature_views", "must be 1 (the image) or 2 (the image and its mirror)")
        several = self.backbone is not None and "," in str(self.backbone)
        if (several or self.feature_views > 1) and not kind.cached_features:
            what = "several backbones" if several else "--feature-views 2"
            bad("backbone" if several else "feature_views",
                f"gives {what}, which only --strategy features combines: drop it or use --strategy features")
        if self.pooling != "avg" and not kind.pools:
            bad("pooling", "is for --strategy features (cached features); --strategy bilinear trains a bilinear "
                           "network")
        if self.pooling != "avg" and self.layer is not None and "," in self.layer:
            bad("layer", "names two layers, but --pooling bilinear taps one")
        if several and self.weights not in ("auto", "hub", "none"):
            bad("weights", "names one file, but several backbones were given: use auto, hub or none")
        if self.reinit < 1:
            bad("reinit", "must be at least 1")
        if not 0 < self.backbone_lr_mult <= 1:
            bad("backbone_lr_mult", "is outside (0, 1]")
        self.milestone_list()
        self.branch_dropouts()
        for key in ("bilinear_reduce", "sketch_dim"):
            if getattr(self, key) is not None and int(getattr(self, key)) < 1:
                bad(key, "must be a positive number of channels or features")
        if self.layer is not None and len([s for s in self.layer.split(",") if s.strip()]) not in (1, 2):
            bad("layer", "must name one layer or two (A,B)")
        if check_files:
            self._refuse_what_would_do_nothing(bad)
        return self

    def _refuse_what_would_do_nothing(self, bad) -> None:
        """Options that a run would accept and then silently not use. Checked for a configuration
        about to be used only: a finished run that recorded one still loads."""
        text = str(self.unfreeze_schedule or "").strip()
        if text and not all(p.strip() for p in text.split(",")):
            raise TransferlabError(f"--unfreeze-schedule '{text}' has an empty entry: give increasing stage "
                                   "counts separated by commas, the last may be 'all', e.g. 1,2,4 or 1,3,all")
        if self.backbone is not None and "," in str(self.backbone):
            names = [b.strip() for b in str(self.backbone).split(",")]
            if not all(names):
                bad("backbone", "has an empty name: give backbone names separated by commas, e.g. "
                                "tf_efficientnet_lite0,tf_efficientnet_lite1")
            repeated = next((b for k, b in enumerate(names) if b in names[:k]), None)
            if repeated is not None:
                bad("backbone", f"names '{repeated}' twice: each backbone's features are concatenated once; "
                                "drop the repeat (--feature-views 2 adds the mirror image's features)")

    def refuse_unused(self) -> "RunConfig":
        """A run's options that its strategy would not use, refused; for the configuration a user
        gives a run (train, compare's configs), not inside the estimator: auto's candidates inherit
        the user's options and each uses what applies to it (--ema trains auto's finetune
        candidates, not its features ones)."""
        kind = strategy(self.strategy)
        if self.ema and kind.cached_features and parse_head(self.head or "linear")[0] == "linear":
            raise TransferlabError(
                f"--ema {self.ema} averages weights trained by gradient, but --strategy features fits its linear "
                "head by logistic regression (no epochs to average): drop --ema, or give --head mlp:512 (a head "
                "trained by gradient, which --ema then averages)")
        if self.logistic_c is not None and not (kind.cached_features or kind.searches):
            raise TransferlabError(f"--logistic-c sets the features strategy's logistic regression, but --strategy "
                                   f"{self.strategy} trains its head by gradient: drop --logistic-c")
        if self.refit_full and not kind.searches:
            raise TransferlabError(f"--refit-full refits auto's chosen candidates on train + val, but --strategy "
                                   f"{self.strategy} chooses nothing: drop --refit-full, or use --strategy auto")
        return self

    def branch_dropouts(self) -> tuple[float, float]:
        rates = parse_branch_dropout(self.branch_dropout)
        if rates is None:
            raise TransferlabError(f"--branch-dropout '{self.branch_dropout}' must be one or two rates in "
                                   "[0, 1), e.g. 0.5 or 0.5,0.5")
        return rates

    def unfreeze_steps(self) -> tuple[int | str, ...]:
        """--unfreeze-schedule as stage counts, increasing (the last may be 'all')."""
        text = str(self.unfreeze_schedule or "").strip()
        if not text:
            return ()
        parts = [p.strip() for p in text.split(",") if p.strip()]
        steps = tuple(int(p) if p.isdigit() else p for p in parts)
        numbers = [s for s in steps if s != "all"]
        if (any(not isinstance(s, int) or s < 1 for s in numbers) or "all" in steps[:-1]
                or numbers != sorted(set(numbers))):
            raise TransferlabError(f"--unfreeze-schedule '{text}' must be increasing stage counts, the last "
                                   "may be 'all', e.g. 1,2,4 or 1,3,all")
        return steps

    def size_list(self) -> tuple[int, ...]:
        """--sizes as increasing pixel sizes."""
        text = str(self.sizes or "").strip()
        if not text:
            return ()
        try:
            sizes = tuple(int(p) for p in text.split(",") if p.strip())
        except ValueError:
            sizes = ()
        if len(sizes) < 2 or list(sizes) != sorted(set(sizes)) or sizes[0] < 8:
            raise TransferlabError(f"--sizes '{text}' must be two or more increasing input sizes (8 px or "
                                   "more) ending at the network's, e.g. 160,224")
        return sizes

    def milestone_list(self) -> tuple[int, ...]:
        try:
            return tuple(sorted(int(m) for m in str(self.milestones).split(",") if m.strip()))
        except ValueError:
            raise TransferlabError(f"--milestones '{self.milestones}' is not a comma-separated list of "
                                   "epochs such as 25,50") from None

    def class_list(self) -> list[str]:
        return [c.strip() for c in str(self.classes).split(",") if c.strip()]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict, origin: str = "config", check_files: bool = True) -> "RunConfig":
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise TransferlabError(
                    f"{origin}: unknown key '{key}'{hint}; known keys: {', '.join(sorted(known))}")
        # Paths given as pathlib objects are stored as text, so config.yaml stays plain YAML;
        # lists (classes, milestones) are stored comma-separated like their options.
        clean = {}
        for k, v in values.items():
            if isinstance(v, os.PathLike):
                v = os.fspath(v)
            elif isinstance(v, (list, tuple)) and k in ("classes", "milestones"):
                v = ",".join(str(x) for x in v)
            elif k == "lr" and isinstance(v, str) and v.strip() == "find":
                v = "find"
            elif k == "lr" and isinstance(v, str):
                try:
                    v = float(v)
                except ValueError:
                    raise TransferlabError(f"{origin}: --lr '{v}' is not a number or 'find'") from None
            elif k in ("sizes", "unfreeze_schedule") and isinstance(v, (list, tuple)):
                v = ",".join(str(x) for x in v)
            elif k == "unfreeze" and v is not None:
                v = int(v) if str(v).strip().isdigit() else str(v).strip()
            elif k == "branch_dropout" and v is not None:
                v = str(v)
            clean[k] = v
        return cls(**clean).validate(check_files)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "RunConfig":
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise TransferlabError(f"config file '{path}' does not exist") from None
        except yaml.YAMLError as err:
            raise TransferlabError(f"config file {yaml_error(Path(path), err)}: fix it there") from None
        if not isinstance(values, dict):
            raise TransferlabError(f"config file '{path}' must hold a mapping of key: value")
        return cls.from_dict(values, origin=str(path))

    def model_options(self) -> dict:
        """The options that decide how the classifier is fitted: ImageClassifier's parameters."""
        return {f.name: getattr(self, f.name) for f in fields(FitOptions)}
