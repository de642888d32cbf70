"""`transferlab compare`: every config of a grid, once per seed, in one process, so decoded images
and cached features are shared; resumable (finished runs are read back, interrupted ones
continue); summarised as mean and standard deviation over seeds, because one seed lies, with a
95% interval of the accuracy and a paired test of the best config against each other one on the
same test images. With `--folds K` every run cross-validates on its train split too, and configs
are ranked by that validation accuracy (a choice made on validation data; the test score stays
beside it)."""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import logging
import math
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..common.atomic import check_writable, replacing, write_text
from ..common.run_files import yaml_error
from ..config import COMPARE_OWNED as OWNED_KEYS
from ..config import RunConfig
from ..data.sources import Source, load_source
from ..errors import TransferlabError
from ..inference.intervals import paired_over_runs, wilson_interval
from ..report.html import write_comparison_report
from .parallel import run_in_workers
from .train import check_data, train

log = logging.getLogger("transferlab")

GRID_KEYS = ("base", "grid", "configs")
CV_COLUMNS = ("cv_accuracy_mean", "cv_accuracy_std")  # only when the runs cross-validated
METRIC_COLUMNS = ("test_accuracy_mean", "test_accuracy_std", "test_accuracy_ci_low", "test_accuracy_ci_high",
                  "vs_best", "test_loss_mean", "test_loss_std", "best_epoch", "train_seconds", "seeds", "status")
NO_PREDICTIONS = "no per-image predictions (runs made before transferlab kept them)"


@dataclass
class Grid:
    base: dict
    configs: list[dict]  # what each config sets on top of base
    varied: list[str]    # the keys whose values differ between configs: the table's columns


def read_grid(path: str | Path, options: dict | None = None) -> Grid:
    """grid.yaml: `base` (options, or the path of a config.yaml), and `grid` (key: [values], run as
    a full product) and/or `configs` (a list of option sets); with both, every listed config runs
    with every grid combination. `options` (given on the command line) join the base."""
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise TransferlabError(f"--grid '{path}' does not exist: write a YAML file with base: and grid: "
                               "or configs:") from None
    except yaml.YAMLError as err:
        raise TransferlabError(f"--grid {yaml_error(path, err)}: fix it there") from None
    if not isinstance(spec, dict) or not set(spec) <= set(GRID_KEYS) or not ({"grid", "configs"} & set(spec)):
        raise TransferlabError(f"--grid '{path}' must be a mapping with 'base' (optional) and 'grid' "
                               f"(key: [values]) and/or 'configs' (a list of option mappings)")
    base = spec.get("base") or {}
    if isinstance(base, str):
        # A run's config.yaml: its data, seed and folders are the comparison's to decide.
        base = {k: v for k, v in RunConfig.from_yaml(path.parent / base).to_dict().items() if k not in OWNED_KEYS}
    if not isinstance(base, dict):
        raise TransferlabError(f"--grid '{path}': 'base' must be a mapping of options or the path of a config.yaml")
    base = {**base, **(options or {})}
    # A key given empty is a mistake, not "the base alone": that would run the defaults once per seed.
    if "configs" in spec and spec["configs"] in (None, []):
        raise TransferlabError(f"--grid '{path}': 'configs' is empty: list at least one option mapping, e.g. "
                               "configs: [{strategy: features}], or remove 'configs' and vary options under grid:")
    if "grid" in spec and spec["grid"] in (None, {}):
        raise TransferlabError(f"--grid '{path}': 'grid' is empty: map at least one key to its values, e.g. "
                               "grid: {lr: [0.001, 0.0003]}, or remove 'grid' and list configs:")
    grid = spec.get("grid") or {}
    listed = spec.get("configs") or [{}]
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise TransferlabError(f"--grid '{path}': 'grid' must map each key to a non-empty list of values")
    if not isinstance(listed, list) or not all(isinstance(c, dict) for c in listed):
        raise TransferlabError(f"--grid '{path}': 'configs' must be a list of option mappings")
    product = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    configs = [{**c, **p} for c in listed for p in product]
    for number, c in enumerate(configs, 1):
        for key in set(c) | set(base):
            if key in OWNED_KEYS:
                raise TransferlabError(f"--grid '{path}': '{key}' is set by compare itself (DATA, --seeds, "
                                       "--out); remove it from the grid")
        try:  # unknown keys and bad values now, not after the first runs
            RunConfig.from_dict({**base, **c}, origin=f"--grid '{path}'").refuse_unused()
        except TransferlabError as err:
            raise TransferlabError(f"--grid '{path}', config {number} ({_entry(c)}): {err}") from None
    keys = list(dict.fromkeys(k for c in configs for k in c))
    varied = [k for k in keys if len({json.dumps(c.get(k, base.get(k)), sort_keys=True) for c in configs}) > 1]
    return Grid(base, configs, varied or keys)


def _entry(values: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in values.items()) or "the base alone"


def check_against_data(grid: str | Path, spec: Grid, data: str, seeds: list[int], source: Source | None = None
                       ) -> None:
    """What each run would refuse about the data once started (--folds beyond a class's training
    images, fractions that leave nothing to score on, a class too small to split), for every
    config and seed, before the first run: one line naming the grid file and the config."""
    sources = {("fine", ()): source} if source is not None else {}  # load_source's defaults
    for number, values in enumerate(spec.configs, 1):
        for seed in seeds:
            try:
                config = RunConfig.from_dict({**spec.base, **values, "data": str(data), "seed": seed})
                key = (config.cifar_labels, tuple(config.class_list()))
                if key not in sources:
                    sources[key] = load_source(data, cifar_labels=config.cifar_labels, classes=config.class_list())
                check_data(config, sources[key])
            except TransferlabError as err:
                raise TransferlabError(f"--grid '{grid}', config {number} ({_entry(values)}): {err}") from None


def config_id(values: dict, base: dict | None = None) -> str:
    """A readable folder name (from what the config sets) that is the same every time the same
    config is compared, and another one when the base under it changed: a finished run is only
    read back for exactly the options it ran with."""
    text = "_".join(f"{k}-{v}" for k, v in values.items()) or "base"
    everything = {**(base or {}), **values}
    digest = hashlib.sha1(json.dumps(everything, sort_keys=True, default=str).encode()).hexdigest()[:6]
    return f"{re.sub(r'[^A-Za-z0-9.=-]+', '-', text)[:60].strip('-')}-{digest}"


@dataclass
class Comparison:
    path: Path
    rows: list[dict]
    columns: list[str]
    varied: list[str] = field(default_factory=list)  # the leading columns that tell configs apart


def compare(data: str, grid: str | Path, seeds: int = 3, out: str | Path = "comparisons",
            name: str | None = None, first_seed: int = 0, progress: bool = True, jobs: int = 1,
            base: dict | None = None, folds: int = 0) -> Comparison:
    """`jobs` > 1 runs the (config, seed) runs in that many worker processes (one GPU each when
    there are GPUs); the table is the same as a serial run's. `folds` joins `base` (so the run
    folders differ from those of a comparison without it)."""
    if folds:
        RunConfig.from_dict({"folds": folds}, origin="compare")  # its own message, not a grid config's
        base = {**(base or {}), "folds": folds}
    if seeds < 1:
        raise TransferlabError(f"--seeds {seeds} must be at least 1")
    if jobs < 1:
        raise TransferlabError(f"--jobs {jobs} must be at least 1")
    spec = read_grid(grid, base)
    source = load_source(data)  # fails now, once, when DATA is wrong
    data_name = source.images.name
    seed_list = list(range(first_seed, first_seed + seeds))
    check_against_data(grid, spec, data, seed_list, source)  # before the first run, as the grid's values are
    path = Path(out) / (name or f"{data_name}-{Path(grid).stem}")
    runs = path / "runs"
    check_writable(runs)
    started = time.perf_counter()
    labels = [", ".join(f"{k}={values.get(k, spec.base.get(k))}" for k in spec.varied) for values in spec.configs]
    tasks = [(ci, seed, str(data), {**spec.base, **values}, runs / f"{config_id(values, spec.base)}-seed{seed}")
             for ci, values in enumerate(spec.configs) for seed in seed_list]
    if jobs == 1:
        outcomes = _serial(tasks, labels, progress, started)
    else:
        outcomes = run_in_workers(_attempt, tasks, jobs, labels, started)
    rows = []
    for ci, values in enumerate(spec.configs):
        results, error = [], None
        for seed in seed_list:  # a config's seeds up to its first failure, as a serial run keeps them
            result, error = outcomes.get((ci, seed), (None, None))
            if error:
                log.warning(f"config {ci + 1} ({labels[ci]}) failed: {error}")
                break
            if result is not None:
                results.append({**result, "seed": seed})
        rows.append(_row(spec, values, results, error, path))
    cv = _with_cv_columns(rows)
    rows = _rank(rows, cv)
    _against_best(rows)
    columns = spec.varied + (list(CV_COLUMNS) if cv else []) + list(METRIC_COLUMNS)
    _write_outputs(path, columns, rows, spec.varied, data_name)
    log.info(f"comparison of {len(rows)} configs x {seeds} seeds written to {path} "
             f"({(time.perf_counter() - started) / 60:.1f} min)")
    return Comparison(path, rows, columns, spec.varied)


def _attempt(task: tuple, progress: bool = False) -> tuple[dict | None, str | None]:
    """(metrics, None) or (None, the error): one broken config must not cost the others their results."""
    ci, seed, data, options, run = task
    try:
        return _run_once(data, options, seed, run, progress), None
    except TransferlabError as err:
        return None, str(err)
    except Exception as err:
        return None, f"{type(err).__name__}: {err}"


def _serial(tasks: list[tuple], labels: list[str], progress: bool, started: float) -> dict:
    outcomes: dict[tuple[int, int], tuple] = {}
    failed: set[int] = set()
    for done, task in enumerate(tasks, 1):
        ci, seed = task[:2]
        if ci in failed:
            continue  # its other seeds are skipped
        elapsed = time.perf_counter() - started
        log.info(f"[{done}/{len(tasks)}] config {ci + 1}/{len(labels)} ({labels[ci]}), seed {seed}; "
                 f"{len(tasks) - done} to go after it; {elapsed / 60:.1f} min so far")
        outcomes[ci, seed] = _attempt(task, progress)
        if outcomes[ci, seed][1]:
            failed.add(ci)
    return outcomes


def _run_once(data: str, options: dict, seed: int, run: Path, progress: bool) -> dict:
    """The run's metrics: read back when it finished earlier, continued when it was interrupted."""
    if (run / "metrics.json").is_file():
        log.info(f"  finished earlier: {run.name}")
        return {**json.loads((run / "metrics.json").read_text()), "run": run}
    if (run / "checkpoint.pt").is_file():
        return {**train(resume=run, progress=progress).metrics, "run": run}
    if run.exists():
        shutil.rmtree(run)  # stopped before its first checkpoint: nothing to keep
    config = RunConfig.from_dict({**options, "data": str(data), "seed": seed, "out": str(run.parent),
                                  "name": run.name})
    return {**train(config=config, progress=progress).metrics, "run": run}


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _row(spec: Grid, values: dict, results: list[dict], error: str | None, path: Path) -> dict:
    scores = [r[r["score_split"]] for r in results]
    acc, acc_std = _mean_std([s["accuracy"] for s in scores])
    low, high = _pooled_interval(scores)
    loss, loss_std = _mean_std([s["log_loss"] for s in scores])
    epochs = [r["fit"].get("best_epoch") for r in results if r["fit"].get("best_epoch")]
    seconds = [r["fit"].get("fit_seconds", r.get("seconds")) for r in results]
    row = {k: values.get(k, spec.base.get(k, getattr(RunConfig(), k, None))) for k in spec.varied}
    row.update(test_accuracy_mean=acc, test_accuracy_std=acc_std, test_accuracy_ci_low=low, test_accuracy_ci_high=high,
               test_loss_mean=loss, test_loss_std=loss_std,
               best_epoch=_mean_std(epochs)[0] if epochs else None,
               train_seconds=_mean_std([s for s in seconds if s is not None])[0] if seconds else None,
               seeds=len(results), status="failed" if error else "ok", error=error or "",
               runs=[str(r["run"].relative_to(path)) for r in results],
               predictions={r["seed"]: r.get("predictions") for r in results})  # until _against_best
    folds = [r["folds"] for r in results if r.get("folds")]
    if folds:  # over every fold of every seed: each is one validation score of the recipe
        row["cv_accuracy_mean"], row["cv_accuracy_std"] = _mean_std([a for f in folds for a in f["val_accuracy"]])
        row["cv_loss_mean"] = _mean_std([v for f in folds for v in f["val_log_loss"]])[0]
    return row


def _pooled_interval(scores: list[dict]) -> tuple[float, float]:
    """The Wilson interval of the accuracy pooled over seeds (right answers over images scored),
    at one run's number of images. Not at the pooled number: every seed scores a folder's own
    test/ again, and random splits redraw their test images from the same pool, so the pooled
    count holds the same images several times and its interval would narrow with each seed
    though no new image was seen. It covers which images were drawn; the std covers the seeds."""
    counted = [s for s in scores if s.get("n")]
    if not counted:
        return math.nan, math.nan
    correct = sum(round(s["accuracy"] * s["n"]) for s in counted)
    return wilson_interval(correct / len(counted), sum(s["n"] for s in counted) / len(counted))


def _against_best(rows: list[dict]) -> None:
    """Each row's `vs_best`: how it fares against the best config on the same test images, by
    exact McNemar over the seeds both ran (a seed's runs of two configs scored the same split).
    Without --folds the best was picked by these very scores, which flatters it a little: a
    p-value just under 0.05 is weak evidence."""
    best = next((r for r in rows if r["best"]), None)
    for r in rows:
        r["vs_best"] = "best" if r is best else _paired(r, best) if best and r["status"] == "ok" else ""
    for r in rows:
        r.pop("predictions")


def _paired(row: dict, best: dict) -> str:
    records = [(row["predictions"][seed], best["predictions"][seed])
               for seed in row["predictions"] if seed in best["predictions"]]
    pairs = [(mine["images"], _correct(mine), _correct(theirs)) for mine, theirs in records
             if mine and theirs and (mine["split"], mine["images"]) == (theirs["split"], theirs["images"])]
    if not pairs:
        kept = records and all(mine and theirs for mine, theirs in records)
        return "not on the same test images" if kept else NO_PREDICTIONS
    test = paired_over_runs(pairs)
    return f"p={test.p_value:.2g} ({test.verdict})"


def _correct(record: dict) -> list[bool]:
    return [c == "1" for c in record["correct"]]


def paired_summary(rows: list[dict], varied: list[str]) -> str | None:
    """One line: which configs the paired test cannot tell from the best (None with no other)."""
    best = next((r for r in rows if r["best"]), None)
    others = [r for r in rows if r["status"] == "ok" and r is not best]
    if best is None or not others:
        return None
    same = [_label(r, varied) for r in others if r["vs_best"].endswith("(not different)")]
    untested = [_label(r, varied) for r in others if not r["vs_best"].startswith("p=")]
    line = (f"not significantly different from the best ({_label(best, varied)}; exact McNemar on the same "
            f"test images, p >= 0.05): {'; '.join(same) or 'none'}")
    return line + (f"; not tested: {'; '.join(untested)}" if untested else "")


def _label(row: dict, varied: list[str]) -> str:
    return ", ".join(f"{k}={_fmt(row[k])}" for k in varied)


def _with_cv_columns(rows: list[dict]) -> bool:
    """Whether any config cross-validated; if so every row gets the cv keys (blank where none)."""
    if not any("cv_accuracy_mean" in r for r in rows):
        return False
    for r in rows:
        for key in (*CV_COLUMNS, "cv_loss_mean"):
            r.setdefault(key, math.nan)
    return True


def _rank(rows: list[dict], cv: bool = False) -> list[dict]:
    """Best accuracy first (lower loss breaks ties); failed configs last; the best one marked.
    With `cv`, the cross-validation accuracy on train decides (its log loss breaks ties), so
    the choice never looks at test; configs without folds come after those with."""
    def key(r):
        ok = r["status"] == "ok"
        if cv:
            scored = ok and not math.isnan(r["cv_accuracy_mean"])
            return (not ok, not scored, -r["cv_accuracy_mean"] if scored else 0, r["cv_loss_mean"] if scored else 0,
                    -r["test_accuracy_mean"] if ok else 0)
        return (not ok, -r["test_accuracy_mean"] if ok else 0, r["test_loss_mean"] if ok else 0)

    rows = sorted(rows, key=key)
    for i, r in enumerate(rows):
        r["best"] = i == 0 and r["status"] == "ok"
    return rows


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def _one_decimal(value) -> str:
    return "" if value is None else f"{value:.1f}"


def _write_outputs(path: Path, columns: list[str], rows: list[dict], varied: list[str], title: str) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns + ["best", "error"])
    for r in rows:
        writer.writerow([_fmt(r[c]) for c in columns] + [r["best"], r["error"]])
    write_text(path / "comparison.csv", buffer.getvalue())
    write_text(path / "comparison.md", markdown_table(rows, varied))
    chart = accuracy_chart(rows, varied, path / "comparison.png")
    write_comparison_report(path, f"Comparison on {title}", columns, rows, chart)


def markdown_table(rows: list[dict], varied: list[str]) -> str:
    cv = any("cv_accuracy_mean" in r for r in rows)
    head = varied + (["cv accuracy"] if cv else []) + ["test accuracy", "95% CI", "vs best", "test loss", "best epoch",
                                                       "train s", "seeds", ""]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [_fmt(r[k]) for k in varied] + ([_plus_minus(r["cv_accuracy_mean"], r["cv_accuracy_std"])]
                                                 if cv else [])
        if r["status"] == "failed":
            cells += ["failed", "", "", "", "", "", str(r["seeds"]), r["error"].replace("|", "\\|")]
        else:
            cells += [
                f"{r['test_accuracy_mean']:.4f} ± {r['test_accuracy_std']:.4f}",
                _interval(r["test_accuracy_ci_low"], r["test_accuracy_ci_high"]), r["vs_best"],
                f"{r['test_loss_mean']:.4f} ± {r['test_loss_std']:.4f}", _one_decimal(r["best_epoch"]),
                _one_decimal(r["train_seconds"]), str(r["seeds"]), "**best**" if r["best"] else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _interval(low: float, high: float) -> str:
    return "" if math.isnan(low) else f"{low:.3f}–{high:.3f}"


def _plus_minus(mean: float, std: float) -> str:
    return "" if math.isnan(mean) else f"{mean:.4f} ± {std:.4f}"


def accuracy_chart(rows: list[dict], varied: list[str], target: Path) -> Path | None:
    """Horizontal bars of mean test accuracy with one-standard-deviation error bars."""
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return None
    # A standalone Agg figure: pyplot's global backend (a user's notebook) stays as it was.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = [_label(r, varied) for r in ok]
    fig = Figure(figsize=(8, 0.5 * len(ok) + 1.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.barh(range(len(ok)), [r["test_accuracy_mean"] for r in ok], xerr=[r["test_accuracy_std"] for r in ok],
            color=["#2a7ab9" if r["best"] else "#9ab" for r in ok], capsize=4)
    ax.set_yticks(range(len(ok)), labels)
    ax.invert_yaxis()
    low = min(r["test_accuracy_mean"] - r["test_accuracy_std"] for r in ok)
    ax.set_xlim(max(0.0, low - 0.05), 1.0)
    ax.set_xlabel(f"test accuracy (mean ± std over {max(r['seeds'] for r in ok)} seeds)")
    fig.tight_layout()
    with replacing(target) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return target
