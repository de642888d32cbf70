"""The audit as people read it: a table in the terminal, and an HTML section (a page of its own,
and a section of a run's report.html) with thumbnails of the flagged images side by side."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..data.decode import UnreadableImage, decode
from ..report.html import _esc, _page, _table, _write_atomic, thumbnail_png, _img
from .duplicates import SPLIT_ORDER
from .images import HUGE_PIXELS, ODD_ASPECT, TINY_SIDE

LISTED = 20       # lines per list in the terminal
THUMBNAILS = 24   # flagged groups or pairs shown as pictures
THUMB_PX = 120
SECTION = re.compile(r'<section id="audit">.*?</section>', re.S)
CSS = ("<style>.pairs{display:flex;flex-wrap:wrap;gap:12px}.pair{border:1px solid #ddd;padding:6px;"
       "background:#fafafa;font-size:.8em;max-width:420px}.pair figure{display:inline-block;margin:0 4px;"
       "width:124px;vertical-align:top;word-break:break-word}.pair .path{color:#777}</style>")


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
            ("grayscale", f"{grey['images']} ({grey['share']:.1%})")]
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
    lines.append("")
    lines.append("findings: " + ("; ".join(result["findings"]) if result["findings"] else "none"))
    return "\n".join(lines) + "\n"


def _num(value) -> str:
    return "  -  " if value is None else f"{value:.3f}"


# ---------------------------------------------------------------------------- html

def _thumb(ref) -> str:
    try:
        return _img(thumbnail_png(decode(ref.source, THUMB_PX), THUMB_PX), "thumbnail", "thumb")
    except (UnreadableImage, OSError):
        return '<span class="note">unreadable</span>'


def _figure(image: dict, refs: dict, root: str) -> str:
    ref = refs.get(image["name"])
    picture = _thumb(ref) if ref is not None else ""
    return (f"<figure>{picture}<figcaption><b>{_esc(image['split'])}</b> · {_esc(image['label'])}"
            f'<br><span class="path">{_esc(short(image["name"], root))}</span></figcaption></figure>')


def _gallery(title: str, boxes: list[tuple[str, list[dict]]], refs: dict, root: str, total: int) -> str:
    if not boxes:
        return ""
    parts = [f"<h3>{_esc(title)}</h3>"]
    if total > THUMBNAILS:
        parts.append(f'<p class="note">The first {THUMBNAILS} of {total}; audit.json lists all.</p>')
    parts.append('<div class="pairs">')
    for caption, images in boxes[:THUMBNAILS]:
        parts.append(f'<div class="pair">{_esc(caption)}<br>'
                     + "".join(_figure(i, refs, root) for i in images[:4]) + "</div>")
    return "".join(parts) + "</div>"


def html_section(result: dict, refs: dict) -> str:
    """<section id="audit"> with the summary, class counts and thumbnails of flagged images."""
    root = result["root"]
    found = result["findings"]
    parts = ['<section id="audit">', CSS, "<h2>Data audit</h2>",
             f"<p>{_esc(result['data'])}: {result['images']} images. "
             + (f"Findings: {_esc('; '.join(found))}." if found else "Nothing found.") + "</p>"]
    splits = [n for n in SPLIT_ORDER if n in result["splits"]]
    rows = [[_esc(c)] + [str(result["splits"][n]["counts"].get(c, 0)) for n in splits] for c in result["classes"]]
    parts.append(_table(["class"] + [f"{n} ({_esc(result['splits'][n]['from'])})" for n in splits], rows,
                        numeric=set(range(1, len(splits) + 1))))
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
              ("grayscale images", f"{result['grayscale']['images']} ({result['grayscale']['share']:.1%})")]
    parts.append(_table(["check", "found"], [[_esc(k), _esc(v)] for k, v in checks], numeric={1}))
    parts.append(_gallery("Leakage: identical files in different splits",
                          [("identical files", g["images"]) for g in result["leakage"]], refs, root,
                          len(result["leakage"])))
    parts.append(_gallery("Label conflicts: identical files with different labels",
                          [("identical files", g["images"]) for g in result["conflicts"]], refs, root,
                          len(result["conflicts"])))
    flagged = sorted(near, key=lambda p: (not (p["cross_split"] or p["conflict"])))
    parts.append(_gallery("Near-duplicate pairs (across splits and with different labels first)",
                          [(f"cosine {p['cosine']:.3f}, pixels {_num(p['pixels']).strip()}"
                            + (" · across splits" if p["cross_split"] else "")
                            + (" · different labels" if p["conflict"] else ""), [p["a"], p["b"]])
                           for p in flagged], refs, root, result.get("near_total") or 0))
    others = [(kind, x) for kind in ("unreadable", "tiny", "huge", "odd_aspect") for x in result[kind]]
    if others:
        items = "".join(f"<li>{_esc(kind.replace('_', ' '))}: {_esc(short(x['name'], root))}"
                        + (f" ({x['width']}x{x['height']})" if "width" in x else f" ({_esc(x['reason'])})")
                        + "</li>" for kind, x in others[:200])
        parts.append(f'<h3>Odd images</h3><ul class="files">{items}</ul>')
    return "".join(parts) + "</section>"


def write_page(path: Path, result: dict, section: str) -> Path:
    head = f'<h1>{_esc(result["name"])}</h1><p class="subtitle">transferlab data audit of {_esc(result["data"])}</p>'
    return _write_atomic(path, _page(f"{result['name']} — transferlab data audit", head + section))


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
    return _write_atomic(path, text)
