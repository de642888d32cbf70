"""The audit as people read it: a table in the terminal, and an HTML section (a page of its own,
and a section of a run's report.html) with thumbnails of the flagged images side by side, and of
each suspected label error beside typical images of its given and its suggested class."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..common.atomic import write_text
from ..data.decode import UnreadableImage, decode
from ..report.html import data_uri, render, thumbnail_png
from .duplicates import SPLIT_ORDER
from .images import HUGE_PIXELS, ODD_ASPECT, TINY_SIDE

LISTED = 20       # lines per list in the terminal
THUMBNAILS = 24   # flagged groups or pairs shown as pictures
THUMB_PX = 120
LABEL_ROWS = 30   # suspected label errors shown as pictures
SECTION = re.compile(r'<section id="audit">.*?</section>', re.S)


def short(name: str, root: str) -> str:
    """A file's path relative to the data's root, for reading; other names unchanged."""
    try:
        rel = os.path.relpath(name, root)
    except ValueError:
        return name
    return name if rel.startswith("..") else rel


# ---------------------------------------------------------------------------- terminal

def format_table(result: dict) -> str:
    root = result["root"]
    s = result["settings"]
    lines = [f"audit of {result['data']}: {result['images']} images, {len(result['classes'])} classes "
             f"(splits as train makes them: val {s['val_fraction']:g}, test {s['test_fraction']:g}, seed {s['seed']})",
             ""]
    splits = [n for n in SPLIT_ORDER if n in result["splits"]]
    width = max([len(c) for c in result["classes"]] + [5])
    lines.append(f"{'class':<{width}}  " + "  ".join(f"{n:>6}" for n in splits))
    for c in result["classes"]:
        lines.append(f"{c:<{width}}  " + "  ".join(f"{result['splits'][n]['counts'].get(c, 0):>6}" for n in splits))
    lines.append(f"{'total':<{width}}  " + "  ".join(f"{result['splits'][n]['images']:>6}" for n in splits))
    im = result["imbalance"]
    if im["ratio"] is not None:
        lines.append(f"largest / smallest class in train: {im['ratio']:g}:1"
                     + ("  <- imbalanced: balanced accuracy is the fairer score; consider --balance weights"
                        if im["warning"] else ""))
    lines += ["", f"{'check':<50}{'found':>7}"]
    near = result.get("near_duplicates")
    grey = result["grayscale"]
    rows = [("exact-duplicate groups (same file content)", len(result["exact_duplicates"])),
            ("  copies leaked into a later split", sum(result["leaked_copies"].values())),
            ("  groups with different labels", len(result["conflicts"])),
            (f"near-duplicate pairs (cosine >= {s['threshold']:g} or pixels)",
             "off" if near is None else result["near_total"]),
            ("  across splits", "-" if near is None else sum(p["cross_split"] for p in near)),
            ("  with different labels", "-" if near is None else sum(p["conflict"] for p in near)),
            ("unreadable files", len(result["unreadable"])),
            (f"tiny (shorter side < {TINY_SIDE} px)", len(result["tiny"])),
            (f"huge (> {HUGE_PIXELS / 1e6:g} megapixels)", len(result["huge"])),
            (f"odd aspect (longer side > {ODD_ASPECT:g}x shorter)", len(result["odd_aspect"])),
            ("grayscale", f"{grey['images']} ({grey['share']:.1%})"),
            ("suspected label errors (train and val)", _label_count(result.get("labels")))]
    lines += [f"{label:<50}{value!s:>7}" for label, value in rows]

    def listing(title: str, entries: list[str], total: int) -> None:
        if entries:
            lines.extend(["", title] + [f"  {e}" for e in entries[:LISTED]])
            if total > LISTED:
                lines.append(f"  ... and {total - LISTED} more (all in audit.json)")

    def group_line(g: dict) -> str:
        return "  =  ".join(f"{short(i['name'], root)} [{i['split']}, {i['label']}]" for i in g["images"])

    listing("leakage (identical files in different splits):",
            [group_line(g) for g in result["leakage"]], len(result["leakage"]))
    listing("label conflicts (identical files, different labels):",
            [group_line(g) for g in result["conflicts"]], len(result["conflicts"]))
    if near:
        listing("near-duplicate pairs (cosine, pixels):",
                [f"{p['cosine']:.3f} {_num(p['pixels'])}  {short(p['a']['name'], root)} [{p['a']['split']}, "
                 f"{p['a']['label']}]  ~  {short(p['b']['name'], root)} [{p['b']['split']}, {p['b']['label']}]"
                 + ("  LEAK" if p["cross_split"] else "") + ("  CONFLICT" if p["conflict"] else "")
                 for p in near], result["near_total"])
    listing("unreadable:", [f"{short(u['name'], root)}: {u['reason']}" for u in result["unreadable"]],
            len(result["unreadable"]))
    for kind in ("tiny", "huge", "odd_aspect"):
        listing(f"{kind.replace('_', ' ')}:", [f"{short(x['name'], root)} ({x['width']}x{x['height']})"
                                              for x in result[kind]], len(result[kind]))
    issues = (result.get("labels") or {}).get("issues") or []
    listing("suspected label errors, most suspect first (given -> suggested, out-of-fold probabilities):",
            [f"{short(i['path'], root)}  {i['given']} ({i['self_confidence']:.2f}) -> {i['suggested']} "
             f"({i['suggested_probability']:.2f})" for i in issues], len(issues))
    lines.append("")
    lines.append("findings: " + ("; ".join(result["findings"]) if result["findings"] else "none"))
    return "\n".join(lines) + "\n"


def _num(value) -> str:
    return "  -  " if value is None else f"{value:.3f}"


def _label_count(labels: dict | None) -> str:
    if labels is None:
        return "off"
    if "skipped" in labels:
        return "skipped"
    return f"{labels['flagged']} ({labels['share']:.1%})"


# ---------------------------------------------------------------------------- html

def _thumb(name: str, refs: dict) -> tuple[str | None, bool]:
    """(the image's thumbnail as a data URI, whether it could not be read); (None, False) when
    the audit has no such image to show."""
    ref = refs.get(name)
    if ref is None:
        return None, False
    try:
        return data_uri(thumbnail_png(decode(ref.source, THUMB_PX), THUMB_PX)), False
    except (UnreadableImage, OSError):
        return None, True


def _figure(image: dict, refs: dict, root: str) -> dict:
    """A flagged image as the section shows it: its thumbnail (None when it has no file to show
    or cannot be read now), its split, label and path."""
    thumb, unreadable = _thumb(image["name"], refs)
    return {"thumb": thumb, "unreadable": unreadable, "split": image["split"], "label": image["label"],
            "path": short(image["name"], root)}


def _label_rows(labels: dict | None, refs: dict, root: str) -> list[dict]:
    """The first LABEL_ROWS suspected label errors, each with typical images of its given class
    and of the class suggested (the ones the out-of-fold model is surest of)."""
    if not labels or "issues" not in labels:
        return []

    def typical(cls: str, but: str) -> list[dict]:
        names = [n for n in labels["examples"].get(cls, []) if n != but][:2]
        return [{"thumb": _thumb(n, refs)[0], "path": short(n, root)} for n in names]

    rows = []
    for issue in labels["issues"][:LABEL_ROWS]:
        thumb, unreadable = _thumb(issue["path"], refs)
        rows.append({"thumb": thumb, "unreadable": unreadable, "path": short(issue["path"], root),
                     "given": issue["given"], "suggested": issue["suggested"],
                     "self_confidence": issue["self_confidence"], "probability": issue["suggested_probability"],
                     "given_examples": typical(issue["given"], issue["path"]),
                     "suggested_examples": typical(issue["suggested"], issue["path"])})
    return rows


def _gallery(title: str, boxes: list[tuple[str, list[dict]]], refs: dict, root: str, total: int) -> dict:
    return {"title": title, "total": total,
            "boxes": [{"caption": caption, "figures": [_figure(i, refs, root) for i in images[:4]]}
                      for caption, images in boxes[:THUMBNAILS]]}


def html_section(result: dict, refs: dict) -> str:
    """<section id="audit"> with the summary, class counts and thumbnails of flagged images."""
    root = result["root"]
    splits = [n for n in SPLIT_ORDER if n in result["splits"]]
    near = result.get("near_duplicates") or []
    checks = [("exact-duplicate groups", len(result["exact_duplicates"])),
              ("copies leaked into a later split", sum(result["leaked_copies"].values())),
              ("exact duplicates with different labels", len(result["conflicts"])),
              ("near-duplicate pairs",
               "not checked" if result.get("near_duplicates") is None else result["near_total"]),
              ("near-duplicate pairs across splits", sum(p["cross_split"] for p in near)),
              ("near-duplicate pairs with different labels", sum(p["conflict"] for p in near)),
              ("unreadable files", len(result["unreadable"])), ("tiny images", len(result["tiny"])),
              ("huge images", len(result["huge"])), ("odd-aspect images", len(result["odd_aspect"])),
              ("grayscale images", f"{result['grayscale']['images']} ({result['grayscale']['share']:.1%})"),
              ("suspected label errors in train and val", _label_count(result.get("labels")))]
    flagged = sorted(near, key=lambda p: (not (p["cross_split"] or p["conflict"])))
    galleries = [
        _gallery("Leakage: identical files in different splits",
                 [("identical files", g["images"]) for g in result["leakage"]], refs, root, len(result["leakage"])),
        _gallery("Label conflicts: identical files with different labels",
                 [("identical files", g["images"]) for g in result["conflicts"]], refs, root, len(result["conflicts"])),
        _gallery("Near-duplicate pairs (across splits and with different labels first)",
                 [(f"cosine {p['cosine']:.3f}, pixels {_num(p['pixels']).strip()}"
                   + (" · across splits" if p["cross_split"] else "")
                   + (" · different labels" if p["conflict"] else ""), [p["a"], p["b"]]) for p in flagged],
                 refs, root, result.get("near_total") or 0)]
    odd = [f"{kind.replace('_', ' ')}: {short(x['name'], root)}"
           + (f" ({x['width']}x{x['height']})" if "width" in x else f" ({x['reason']})")
           for kind in ("unreadable", "tiny", "huge", "odd_aspect") for x in result[kind]][:200]
    labels = result.get("labels")
    return render("audit_section.html.j2", data=result["data"], images=result["images"],
                  findings=result["findings"], checks=checks, galleries=galleries, odd=odd,
                  labels=labels if labels and "issues" in labels else None,
                  label_rows=_label_rows(labels, refs, root),
                  class_head=["class"] + [f"{n} ({result['splits'][n]['from']})" for n in splits],
                  class_rows=[[c] + [result["splits"][n]["counts"].get(c, 0) for n in splits]
                              for c in result["classes"]],
                  class_numeric=tuple(range(1, len(splits) + 1)))


def write_page(path: Path, result: dict, section: str) -> Path:
    page = render("audit_page.html.j2", title=f"{result['name']} — transferlab data audit", name=result["name"],
                  data=result["data"], section=section)
    return write_text(path, page)


def add_to_run_report(run_dir: Path, section: str) -> Path | None:
    """Put the Audit section into run_dir/report.html (replacing an earlier one), if it exists."""
    path = run_dir / "report.html"
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    if SECTION.search(text):
        text = SECTION.sub(lambda _: section, text, count=1)
    elif "<h2>Configuration</h2>" in text:
        text = text.replace("<h2>Configuration</h2>", section + "<h2>Configuration</h2>", 1)
    else:
        text = text.replace("</body>", section + "</body>", 1)
    return write_text(path, text)
