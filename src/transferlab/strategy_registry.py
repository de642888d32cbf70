"""Every strategy in one registry: its default recipe, the plan of phases the engine runs for it
(built in training/strategies.py), and the flags that the options, the estimator and the workflows
ask of it instead of comparing its name. Torch-free, so the command line checks options with it
before importing PyTorch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Strategy:
    name: str
    recipe: dict                  # what it uses for every option left at None
    phases: str | None = None     # its phase plan in training/strategies.py (None: no engine phases)
    pixels: bool = True           # trains on pixels by gradient (checkpoints, prefix cache, --sizes)
    cached_features: bool = False  # fits a head on cached features: logistic regression (--logistic-c)
    #                               or an MLP; several backbones or views (--backbone a,b) combine there
    pools: bool = False           # its features take --pooling bilinear
    unfreezes_stages: bool = False  # --lr-decay and --unfreeze-schedule apply
    searches: bool = False        # a search over the others (auto): its own validation split, no lr sweep
    reinitialises: bool = False   # fresh weights for the last --reinit stages
    bilinear_network: bool = False  # a tapped backbone and a bilinear head


_TRAINED = dict(head="linear", optimizer="adamw", augment="standard", featurewise_norm=False)

REGISTRY: dict[str, Strategy] = {s.name: s for s in (
    Strategy("features", dict(head="linear", dropout=0.5, epochs=100, patience=10, lr=1e-3, optimizer="adamw",
                              augment="none", featurewise_norm=False, head_epochs=0, warmup_epochs=0.0),
             pixels=False, cached_features=True, pools=True),
    Strategy("frozen", dict(_TRAINED, dropout=0.2, epochs=15, patience=5, lr=1e-3, head_epochs=0, warmup_epochs=0.0),
             phases="head_only"),
    # finetune unfreezes the last 3 stages: against 1, +3.0 points on cars43 and +5.0 on
    # cifar10-small (benchmarks/training_tools.py) for about 2.2x the time.
    Strategy("finetune", dict(_TRAINED, dropout=0.2, epochs=30, head_epochs=5, patience=5, lr=1e-3,
                              warmup_epochs=1.0, unfreeze=3),
             phases="head_then_stages", unfreezes_stages=True),
    Strategy("reinit", dict(_TRAINED, dropout=0.2, epochs=15, patience=5, lr=1e-3, head_epochs=0, warmup_epochs=0.0),
             phases="fresh_stages", reinitialises=True),
    Strategy("bilinear", dict(_TRAINED, dropout=0.5, epochs=10, head_epochs=5, patience=5, lr=1e-3,
                              warmup_epochs=1.0, unfreeze=1),
             phases="head_then_stages", unfreezes_stages=True, bilinear_network=True),
    Strategy("scratch", dict(backbone="basenet", image_size=32, dropout=0.5, epochs=30, patience=10, lr=0.02,
                             optimizer="sgd", augment="classic", featurewise_norm=True, head_epochs=0,
                             warmup_epochs=0.0),
             phases="everything"),
    # auto: every candidate resolves its own recipe; the budget bounds them all.
    Strategy("auto", dict(budget=20.0), pixels=False, pools=True, searches=True),
)}
NAMES = tuple(REGISTRY)


def strategy(name: str) -> Strategy:
    return REGISTRY[name]
