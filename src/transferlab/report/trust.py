"""The report's view of how far a run can be trusted: the reliability diagram (confidence against
accuracy, before and after calibration) and the unknown-image trade-off, from metrics.json."""

from __future__ import annotations

import io


def reliability_png(before: dict, after: dict) -> bytes:
    """PNG bytes of the reliability diagram: per bin of top probability, the accuracy of its
    images against their mean confidence (the diagonal is perfect calibration), before and
    after calibration, each labelled with its expected calibration error."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.6, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfect calibration")
    for curve, style, name in ((before, "o:", "before"), (after, "s-", "after")):
        bins = curve.get("bins") or []
        if bins:
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], style, markersize=4,
                    label=f"{name} calibration (ECE {curve['ece']:.3f})")
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def trust_section(metrics: dict) -> dict | None:
    """What the report says of calibration and unknown images; None for runs without either."""
    calibration, unknown = metrics.get("calibration"), metrics.get("unknown")
    if not calibration and not unknown:
        return None
    section = {"calibration": None, "unknown": None}
    if calibration:
        fitted = calibration.get("fitted") or {}
        how = (f"temperature {fitted['temperature']:.3g}" + (
            "" if fitted.get("method") == "temperature" else " and a bias per class")) if fitted else "none"
        section["calibration"] = {
            "how": how, "fitted_on": fitted.get("fitted_on", "?"), "images": fitted.get("images"),
            "ece_before": f"{calibration['ece_before']:.4f}", "ece_after": f"{calibration['ece_after']:.4f}",
            "split": calibration.get("split"), "bins": calibration.get("bins"),
            "diagram": reliability_png(calibration["before"], calibration["after"])}
    if unknown:
        section["unknown"] = {
            "threshold": f"{unknown['threshold']:.4f}", "keep": f"{unknown['keep']:.0%}",
            "kept": f"{unknown['kept']:.1%}", "split": unknown.get("split"),
            "rows": [[f"{r['keep']:.0%}", f"{r['threshold']:.4f}", f"{r['kept']:.1%}",
                      "-" if r["accuracy_kept"] is None else f"{r['accuracy_kept']:.4f}"]
                     for r in unknown["trade_off"]]}
    return section
