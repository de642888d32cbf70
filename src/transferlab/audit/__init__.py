"""The data audit: duplicates, leakage across splits, label conflicts, class balance and odd
images of a data set, on the splits `train` would use, and with `labels` the images whose label
looks wrong; reported as a table, audit.json, label_issues.csv and HTML.

`audit()` is the whole audit (what `transferlab audit` runs); `duplicates.pre_training_check`
is its cheap part, which `train` (and so `compare`) runs before every training run.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from ..common.atomic import check_writable, write_json
from ..common.run_files import read_run_file
from ..common.run_lock import RunLock
from ..config import RunConfig
from ..data.sources import load_source
from ..data.split import split_source
from ..errors import TransferlabError
from . import report
from .duplicates import SPLIT_ORDER, check_splits, describe
from .images import HUGE_PIXELS, ODD_ASPECT, TINY_SIDE, flags, inspect_all
from .near import DEFAULT_THRESHOLD, PIXEL_THRESHOLD

log = logging.getLogger("transferlab")

__all__ = ["audit", "DEFAULT_THRESHOLD"]
ISSUES_CSV = "label_issues.csv"
LIMITS = {"unreadable": "skipped by train", "tiny": f"shorter side < {TINY_SIDE} px",
          "huge": f"> {HUGE_PIXELS / 1e6:g} megapixels", "odd_aspect": f"longer side > {ODD_ASPECT:g}x shorter"}


def audit(data: str | None = None, *, threshold: float = DEFAULT_THRESHOLD, near: bool = True,
          labels: bool = False, out: str | Path | None = None, run: str | Path | None = None,
          val_fraction: float | None = None, test_fraction: float | None = None, seed: int | None = None,
          classes: str | None = None, cifar_labels: str | None = None, backbone: str | None = None,
          cache_dir: str | None = None, feature_cache: bool = True, batch_size: int = 32,
          progress: bool = True) -> dict:
    """Audit `data` (or the data of `run`) and write audit.json and audit.html to `out` (default
    audits/<data name>/); with `run`, also audit.json into the run and an Audit section into its
    report.html. Split options default to the run's config, else to train's defaults.
    `labels`: also the suspected label errors of train and val (audit/labels.py), in audit.json's
    `labels` and in label_issues.csv, a file `train --exclude` and `--relabel` read back.
    Returns the JSON-able findings (what audit.json holds); with `labels`, the check's result
    object is `result["labels"]`'s source, returned as `result["label_issues"]` (not written)."""
    started = time.perf_counter()
    if not 0 < threshold <= 1:
        raise TransferlabError(f"--threshold {threshold} is outside (0, 1]: give a cosine such as {DEFAULT_THRESHOLD}")
    if out is not None:  # a file given as the folder is one line before anything is read
        check_writable(out, create=False, option="--out")
    source, splits, settings = _splits(data, run, val_fraction, test_fraction, seed, classes, cifar_labels)
    out = check_writable(Path(out) if out is not None else Path("audits") / source.images.name,
                         option="--out")  # before the work
    if run is not None:
        check_writable(run)
    log.info(f"auditing {settings['data']}: {len(source.images)} images, {len(source.images.classes)} classes; "
             f"{splits.summary()}")
    timings = {}
    t = time.perf_counter()
    check = check_splits(splits)
    items, names = check.items, check.classes
    timings["hashes"] = time.perf_counter() - t
    t = time.perf_counter()
    inspected = inspect_all([it.ref for it in items])
    timings["images"] = time.perf_counter() - t
    result = {
        "data": settings.pop("data"), "name": source.images.name, "root": source.root, "images": len(items),
        "classes": names,
        "settings": {**settings, "near": near, "threshold": threshold, "pixel_threshold": PIXEL_THRESHOLD,
                     "tiny_side": TINY_SIDE, "huge_pixels": HUGE_PIXELS, "odd_aspect": ODD_ASPECT},
        "splits": {name: {"images": len(part), "from": splits.origins.get(name, ""),
                          "counts": check.counts[name]} for name, part in splits.items()},
        "imbalance": check.imbalance(),
        "exact_duplicates": check.group_records(check.groups),
        "leakage": check.group_records(check.leaked_groups),
        "leaked_copies": check.leaked_by_split(),
        "conflicts": check.group_records(check.conflict_groups),
    }
    _image_findings(result, items, inspected, names)
    crop = None
    if near:
        t = time.perf_counter()
        crop = _near(result, check, inspected, threshold, backbone, cache_dir, feature_cache, batch_size, progress)
        timings["near"] = time.perf_counter() - t
    else:
        result["near_duplicates"], result["near_total"] = None, None
    issues = None
    if labels:
        from .label_check import label_check

        t = time.perf_counter()
        issues = label_check(check, crop, backbone, cache_dir, feature_cache, batch_size, progress, settings["seed"])
        result["labels"] = issues.to_dict() if issues is not None else {"skipped": "a class of train and val has "
                                                                      "fewer than two readable images"}
        timings["labels"] = time.perf_counter() - t
    else:
        result["labels"] = None
    result["findings"] = findings(result)
    timings["total"] = time.perf_counter() - started
    result["seconds"] = {k: round(v, 2) for k, v in timings.items()}
    _write(result, out, run, {it.ref.name: it.ref for it in items}, issues)
    if issues is not None:
        result["label_issues"] = issues
    return result


def _splits(data, run, val_fraction, test_fraction, seed, classes, cifar_labels) -> tuple:
    """The source and the splits `train` would make (or made, for `run`), and their settings."""
    base = RunConfig()
    if run is not None:
        # check_files=False: a finished run's weights file may be gone; its split settings are not.
        base = RunConfig.from_dict(read_run_file(Path(run), "config.yaml"), origin=f"{run}/config.yaml",
                                   check_files=False)
    if data is None and run is None:
        raise TransferlabError("audit needs DATA (a folder, a .csv file, a CIFAR archive or 'digits') or --run RUN")
    if run is not None and data is not None and not _same_data(str(data), base.data):
        # The run's audit.json and report would describe data the run never saw.
        raise TransferlabError(f"--run {run} was trained on '{base.data}', not on '{data}': drop DATA to audit the "
                               f"run's own data and splits, or drop --run to audit '{data}' on its own")
    data = str(data) if data is not None else base.data
    vf = base.val_fraction if val_fraction is None else val_fraction
    tf = base.test_fraction if test_fraction is None else test_fraction
    seed = base.seed if seed is None else seed
    wanted = base.class_list() if classes is None else [c.strip() for c in classes.split(",") if c.strip()]
    source = load_source(data, cifar_labels=cifar_labels or base.cifar_labels, classes=wanted)
    splits = split_source(source, vf, tf, seed)
    return source, splits, {"data": data, "val_fraction": vf, "test_fraction": tf, "seed": seed}


def _same_data(given: str, trained: str) -> bool:
    """Whether DATA names the data a run was trained on: the same text, or the same file or folder."""
    if given == trained:
        return True
    return Path(given).expanduser().resolve() == Path(trained).expanduser().resolve()


def _write(result: dict, out: Path, run, refs: dict, issues=None) -> None:
    """audit.json and audit.html in `out` (and label_issues.csv with the label check); with a run,
    audit.json and an Audit section there too."""
    result["written"] = [str(out / "audit.json"), str(out / "audit.html")]
    if issues is not None:
        from .label_check import write_issues_csv

        result["written"].append(str(write_issues_csv(out / ISSUES_CSV, issues, result["root"])))
    section = report.html_section(result, refs)
    if run is not None:
        result["written"].append(str(Path(run) / "audit.json"))
        if (Path(run) / "report.html").is_file():
            result["written"].append(str(Path(run) / "report.html"))
    write_json(out / "audit.json", result)
    report.write_page(out / "audit.html", result, section)
    if run is not None:
        with RunLock(run):
            write_json(Path(run) / "audit.json", result)
            report.add_to_run_report(Path(run), section)


def _image_findings(result: dict, items, inspected, classes: list[str]) -> None:
    result["unreadable"] = [{"name": it.ref.name, "reason": info.error}
                            for it, info in zip(items, inspected) if info.error]
    for kind in ("tiny", "huge", "odd_aspect"):
        result[kind] = [{"name": it.ref.name, "split": it.split, "width": info.width, "height": info.height}
                        for it, info in zip(items, inspected) if kind in flags(info)]
    readable = [(it, info) for it, info in zip(items, inspected) if not info.error]
    grey = [it for it, info in readable if info.grayscale]
    by_class = {}
    for label, name in enumerate(classes):
        members = [info.grayscale for it, info in readable if it.label == label]
        by_class[name] = round(sum(members) / len(members), 4) if members else 0.0
    result["grayscale"] = {"images": len(grey), "share": round(len(grey) / max(len(readable), 1), 4),
                           "by_class": by_class, "names": [it.ref.name for it in grey]}


def _near(result: dict, check, inspected, threshold: float, backbone, cache_dir, feature_cache,
          batch_size: int, progress: bool):
    """The near-duplicate pairs into `result`; returns the features (the label check reuses them)."""
    from .near import backbone_features, near_pairs

    items = check.items
    feats = backbone_features([it.ref for it in items], backbone, cache_dir=cache_dir,
                              feature_cache=feature_cache, batch_size=batch_size, progress=progress)
    rows = np.flatnonzero(feats.ok)
    known = {u["name"] for u in result["unreadable"]}
    for failure in feats.failures:  # unreadable at full size though a small decode worked
        if failure.source not in known:
            result["unreadable"].append({"name": failure.source, "reason": failure.reason})
    group_of = {i: g for g, members in enumerate(check.groups) for i in members}
    pairs, total = near_pairs(feats.vectors, [inspected[i].thumb for i in rows], threshold)
    listed = []
    for p in pairs:
        i, j = int(rows[p["i"]]), int(rows[p["j"]])
        if i in group_of and group_of.get(j) == group_of[i]:
            total -= 1  # an exact duplicate: listed there
            continue
        a, b = describe(items[i], check.classes), describe(items[j], check.classes)
        listed.append({"a": a, "b": b, "cosine": p["cosine"], "pixels": p["pixels"], "by": p["by"],
                       "cross_split": a["split"] != b["split"], "conflict": a["label"] != b["label"]})
    result["near_duplicates"], result["near_total"] = listed, max(total, len(listed))
    result["features"] = {"backbone": feats.backbone, "computed": feats.computed, "cached": feats.cached}
    return feats


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def findings(result: dict) -> list[str]:
    """One line per kind of problem found; empty for a clean data set."""
    lines = []
    exact = result["exact_duplicates"]
    if exact:
        copies = sum(len(g["images"]) - 1 for g in exact)
        extra = _count(copies, "extra copy", "extra copies")
        lines.append(f"{_count(len(exact), 'group')} of exact duplicates ({extra})")
    if result["leaked_copies"]:
        where = ", ".join(f"{n} in {s}" for s, n in sorted(result["leaked_copies"].items(),
                                                           key=lambda kv: SPLIT_ORDER.index(kv[0])))
        copies = _count(sum(result["leaked_copies"].values()), "exact copy", "exact copies")
        lines.append(f"leakage: {copies} of earlier-split images ({where})")
    if result["conflicts"]:
        groups = _count(len(result["conflicts"]), "group")
        lines.append(f"label conflicts: {groups} of identical images with different labels")
    near = result.get("near_duplicates")
    if near:
        cross = sum(p["cross_split"] for p in near)
        conflict = sum(p["conflict"] for p in near)
        lines.append(f"{_count(result['near_total'], 'near-duplicate pair')} ({cross} across splits, "
                     f"{conflict} with different labels)")
    if result["imbalance"]["warning"]:
        im = result["imbalance"]
        lines.append(f"classes imbalanced in train: {im['ratio']:g}:1 ('{im['largest']}' vs '{im['smallest']}')")
    for kind, one, many in (("unreadable", "unreadable file", "unreadable files"),
                            ("tiny", "tiny image", "tiny images"), ("huge", "huge image", "huge images"),
                            ("odd_aspect", "odd-aspect image", "odd-aspect images")):
        if result[kind]:
            lines.append(f"{_count(len(result[kind]), one, many)} ({LIMITS[kind]})")
    checked = result.get("labels") or {}
    if checked.get("flagged"):
        top = checked["issues"][0]
        lines.append(f"suspected label errors: {checked['flagged']} ({checked['share']:.1%} of train and val), top: "
                     f"{report.short(top['path'], result['root'])} {top['given']} -> {top['suggested']} "
                     f"({top['suggested_probability']:.2f})")
    grey = result["grayscale"]
    if 0 < grey["images"] < sum(s["images"] for s in result["splits"].values()) - len(result["unreadable"]):
        lines.append(f"{grey['images']} grayscale image(s) among colour ones ({grey['share']:.1%})")
    return lines
