#!/usr/bin/env python3
"""Render docs/img/targets.png: every figure of the summary table of
docs/performance.md as a bar, measured against its target, oriented so that
a bar shorter than 1.0 passes and a longer one misses.

    .venv/bin/python bench/chart.py            # reads docs/performance.md
    .venv/bin/python bench/chart.py --check    # parse and cross-check only, no image

The figures come from the committed page, not from bench/results/ (which is
git-ignored and holds the last run, whatever it was): the chart shows what
the page states. Re-run it after editing the summary table.

Orientation: for an "at most" target (`< 20 ms`) the bar is measured /
target; for an "at least" target (`>= 0.5` of echo) it is target / measured,
so that in both cases 2.0 means "twice as far from the target as allowed"
and anything left of 1.0 passes. Rows marked `(info)` are drawn grey: they
are reported, not judged. The script refuses to draw when its own pass/fail
reading of a row disagrees with the page's `met` column.
"""
import argparse
import math
import os
import re
import sys
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "performance.md")
OUT = os.path.join(ROOT, "docs", "img", "targets.png")
HEADING = "## Summary: every figure against its target"
CLIP = 4.0   # bars longer than this are cut, with their value written at the cut
XMAX = 5.2   # room right of the longest bar for its label
LEAST = 0.02  # a passing 0 (nothing lost) still shows as a sliver

COLOURS = {"pass": "#2e7d32", "miss": "#c62828", "info": "#b0b0b0"}
LEGEND = {"pass": "target met", "miss": "target missed", "info": "info only (reported, not judged)"}


@dataclass(frozen=True)
class Figure:
    name: str
    measured: float
    target: str      # as the page writes it, e.g. ">= 0.5" or "< 20 ms (info)"
    op: str          # "<" or ">="
    goal: float
    info: bool
    met: str         # the page's column: "yes", "no" or "info"

    @property
    def ratio(self):
        """Distance to the target, < 1 passes whatever the direction."""
        if self.op == "<":
            return self.measured / self.goal
        return math.inf if self.measured == 0 else self.goal / self.measured

    @property
    def passes(self):
        return self.measured < self.goal if self.op == "<" else self.measured >= self.goal

    @property
    def verdict(self):
        return "info" if self.info else ("pass" if self.passes else "miss")


def number(text):
    return float(text.replace(",", "").replace("**", "").strip())


def parse(markdown, where=DOC):
    """The summary table's rows with a numeric target, in page order."""
    lines = markdown.splitlines()
    try:
        start = lines.index(HEADING)
    except ValueError:
        raise SystemExit(f"{where}: no line {HEADING!r}")
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("#"):
            break
        if not line.startswith("| ") or line.startswith("| figure |"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        name, measured, target, met = cells[:4]
        m = re.match(r"(>=|<)\s*([\d,.]+)", target)
        if not m:    # "(info)" without a number: nothing to measure against
            continue
        rows.append(Figure(name, number(measured), target, m.group(1), number(m.group(2)),
                           "(info)" in target, met.replace("*", "")))
    if not rows:
        raise SystemExit(f"{where}: no rows under {HEADING!r}")
    return rows


def check(rows):
    """The page's `met` column and this script's reading must agree."""
    expected = {"pass": "yes", "miss": "no", "info": "info"}
    wrong = [f"{r.name}: page says {r.met!r}, chart reads {r.verdict}"
             for r in rows if expected[r.verdict] != r.met]
    if wrong:
        raise SystemExit("chart.py: the page and the chart disagree:\n  " + "\n  ".join(wrong))


def short(value):
    return f"{value:,.3g}" if value < 1000 else f"{value:,.0f}"


def render(rows, out=OUT):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    n = len(rows)
    fig, ax = plt.subplots(figsize=(15, 0.34 * n + 2.2))
    y = list(range(n))[::-1]     # first row of the table on top
    ax.axvspan(0, 1, color=COLOURS["pass"], alpha=0.06, lw=0)
    ax.axvspan(1, XMAX, color=COLOURS["miss"], alpha=0.05, lw=0)
    for yi, r in zip(y, rows):
        shown = max(min(r.ratio, CLIP), LEAST)
        ax.barh(yi, shown, color=COLOURS[r.verdict], height=0.72,
                hatch="//" if r.info else None, edgecolor="white" if r.info else None)
        value = short(r.ratio) if math.isfinite(r.ratio) else "∞"
        target = r.target.replace(">=", "≥")
        cut = f" (bar cut at {short(CLIP)})" if r.ratio > CLIP else ""
        text = f"{value}{cut}   ({short(r.measured)} vs {target})"
        # a cut bar carries its label inside, against the cut; the others right after the bar
        ax.text(CLIP - 0.05 if cut else shown + 0.04, yi, text, va="center", ha="right" if cut else "left",
                fontsize=8,
                color="#555555" if r.info else "black",
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})
    ax.axvline(1.0, color="black", lw=1.6)
    ax.text(1.0, n - 0.35, " 1.0 = exactly on target", fontsize=8.5, va="bottom", ha="left")
    ax.set_yticks(y)
    ax.set_yticklabels([r.name for r in rows], fontsize=8.5)
    for label, r in zip(ax.get_yticklabels(), rows):
        label.set_color("#666666" if r.info else "black")
    ax.set_ylim(-0.7, n + 0.2)
    ax.set_xlim(0, XMAX)
    ax.set_xlabel("distance to the target: measured / target for 'less than' targets, "
                  "target / measured for 'at least' targets  —  left of 1.0 passes, right of it misses")
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    counts = {v: sum(r.verdict == v for r in rows) for v in COLOURS}
    ax.set_title(f"np-social: every figure of docs/performance.md against its target — "
                 f"{counts['pass']} met, {counts['miss']} missed, {counts['info']} info", fontsize=11)
    ax.legend(handles=[Patch(color=COLOURS[v], label=f"{LEGEND[v]} ({counts[v]})",
                             hatch="//" if v == "info" else None) for v in COLOURS],
              loc="lower right", fontsize=9, framealpha=0.95)
    fig.tight_layout()
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--doc", default=DOC, help="the page to read (default docs/performance.md)")
    ap.add_argument("--out", default=OUT, help="the PNG to write (default docs/img/targets.png)")
    ap.add_argument("--check", action="store_true", help="parse and cross-check only")
    args = ap.parse_args(argv)
    with open(args.doc, encoding="utf-8") as f:
        rows = parse(f.read(), args.doc)
    check(rows)
    for r in rows:
        print(f"{r.verdict:4}  {r.ratio:8.3g}  {r.name}")
    if not args.check:
        print(render(rows, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
