"""auto's candidates as data: each entry says what it changes on the candidate it builds on,
when it is worth trying (read from the scores of the candidates already fitted), and what it
costs against one features pass of its backbone. One loop (search.py) runs them in this order.

The order is cheapest first: every feature candidate costs one backbone pass (then cached);
trained candidates cost several."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..models.compute import native_size
from ..strategy_registry import strategy

# Bilinear pooling of a frozen tap: the same pass, then logistic regression on ~18k features
# instead of 1,280 (cars43: about 2.5x the features run with a validation split).
BILINEAR_POOLING_OVER_FEATURES = 2.5
# Fine-grained classes are told apart by small parts: bilinear pooling of the last block stage at
# twice the native size scored 0.912 against 0.899 at 224 px on cars43 (Lite0, squash).
HIGHER_RESOLUTION = 2
# Fine-tuning against one features pass over the same images, measured on cars43 and
# hymenoptera with the default recipe (2 cached views, up to 35 epochs on the cache), times the
# recipe's 3 unfrozen stages against 1 (2.2x on cars43 and cifar10-small).
FINETUNE_OVER_FEATURES = 4.0 * 2.2
# The bilinear strategy's two phases (one stage unfrozen) against one features pass.
BILINEAR_OVER_FEATURES = 4.0


@dataclass
class Finished:
    """A fitted candidate as the portfolio sees it: its name, options and validation scores."""
    name: str
    entry: str
    options: dict
    val_accuracy: float
    val_log_loss: float

    @property
    def rank(self) -> tuple[float, float]:
        return self.val_accuracy, -self.val_log_loss


def _best(done: list[Finished], *entries: str) -> Finished | None:
    found = [f for f in done if f.entry in entries and "," not in f.options.get("backbone", "")]
    return max(found, key=lambda f: f.rank, default=None)


@dataclass(frozen=True)
class Entry:
    """One kind of candidate. `base(done)` is the fitted candidate it builds on (None: nothing to
    build on, so it is not tried); `changes(base_options)` the options it changes; `worth(base,
    done)` whether the measurements so far make it worth its cost; `cost(options)` its seconds in
    units of one features pass of its backbone at the native size, and `runtime` which measured
    pace applies: the frozen pass's (onnxruntime on a CPU) or PyTorch's."""
    key: str
    suffix: str
    base: Callable[[list[Finished]], Finished | None]
    changes: Callable[[dict], dict]
    cost: Callable[[dict], float]
    runtime: str = "frozen"
    trains: bool = False
    worth: Callable[[Finished, list[Finished]], bool] = field(default=lambda base, done: True)


def _beat_its_base(entry: str, base_entries: tuple[str, ...]) -> Callable[[Finished, list[Finished]], bool]:
    """Worth it when candidates of `entry` scored above the best of `base_entries` on validation:
    bilinear pooling beating pooled features says the classes differ in small parts."""
    def worth(base: Finished, done: list[Finished]) -> bool:
        pooled, plain = _best(done, entry), _best(done, *base_entries)
        return pooled is not None and plain is not None and pooled.rank > plain.rank
    return worth


def _look(done: list[Finished]) -> Finished | None:
    """The better view of the best backbone: centre crop or squash."""
    return _best(done, "features", "squash")


def _sharper(options: dict) -> dict:
    size = HIGHER_RESOLUTION * native_size(options["backbone"])
    layer = "blocks.6" if options["backbone"].startswith("tf_efficientnet_lite") else None
    return {"image_size": size, "layer": layer}


def _sharper_cost(options: dict) -> float:
    # The backbone at twice the size (about four times the pass), then the pooling's classifier.
    return HIGHER_RESOLUTION ** 2 + BILINEAR_POOLING_OVER_FEATURES - 1


PORTFOLIO: tuple[Entry, ...] = (
    # The whole image squashed to the square against timm's centre crop: far better on wide
    # objects (cars43 0.83 against 0.69), worse on others below the native size.
    Entry("squash", "squash", lambda done: _best(done, "features"), lambda o: {"resize": "squash"},
          lambda o: 1.0),
    Entry("pooling", "bilinear pooling", _look, lambda o: {"pooling": "bilinear"},
          lambda o: BILINEAR_POOLING_OVER_FEATURES, runtime="torch"),
    Entry("sharper", "{size} px", lambda done: _best(done, "pooling"), _sharper, _sharper_cost, runtime="torch",
          worth=_beat_its_base("pooling", ("features", "squash"))),
    Entry("finetune", "finetune", _look, lambda o: {"strategy": "finetune"}, lambda o: FINETUNE_OVER_FEATURES,
          runtime="torch", trains=True),
    Entry("bilinear", "bilinear", _look, lambda o: {"strategy": "bilinear"}, lambda o: BILINEAR_OVER_FEATURES,
          runtime="torch", trains=True, worth=_beat_its_base("pooling", ("features", "squash"))),
)


def candidate_name(entry: Entry, base: Finished, options: dict) -> str:
    suffix = entry.suffix.format(size=options.get("image_size"))
    if strategy(options["strategy"]).pixels:  # a trained candidate: strategy, backbone, view
        view = " squash" if options.get("resize") == "squash" else ""
        return f"{options['strategy']} {_short(options['backbone'])}{view}"
    return f"{base.name} {suffix}"


def features_name(backbone: str) -> str:
    return f"features {_short(backbone)}"


def _short(backbone: str) -> str:
    return backbone.removeprefix("tf_efficientnet_")
