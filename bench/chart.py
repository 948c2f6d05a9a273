"""Bar charts from benchmark JSON lines: one PNG per bench, shapes on x, one bar per impl.

Reads the lines the bench scripts print (a file, or stdin with ``-``); other lines (Markdown
tables) and lines without a metric (errors, skipped peers) are ignored. The metric per bench
is the first of METRICS its rows carry. Needs matplotlib (on the device image; not a
project dependency). Usage: python bench/chart.py out/bench.jsonl [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

# (row key, axis label), in order of preference.
METRICS = [("tflops", "TFLOP/s (higher is better)"), ("tbps", "TB/s of K+V read (higher is better)"),
           ("overhead_pct", "% time over no mask (lower is better)"),
           ("output_tok_s", "output tokens/s (higher is better)"), ("ms", "ms (lower is better)")]


def read_rows(lines) -> list[dict]:
    """JSON objects with ``bench``, ``shape`` and ``impl`` from the ``{``-lines of ``lines``."""
    rows = []
    for line in lines:
        line = line.strip()
        if line.startswith("{"):
            row = json.loads(line)
            if {"bench", "shape", "impl"} <= row.keys():
                rows.append(row)
    return rows


def chart(bench: str, rows: list[dict], out_dir: Path) -> Path | None:
    """Write ``<out_dir>/<bench>.png``; None when no row has a metric."""
    key, label = next(((k, lbl) for k, lbl in METRICS if any(k in r for r in rows)), (None, ""))
    if key is None:
        return None
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in rows if key in r))
    values = {(r["shape"], r["impl"]): r[key] for r in rows if key in r}
    width = 0.8 / len(impls)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(shapes) * len(impls) + 1), 4.5))
    for i, impl in enumerate(impls):
        xs = [s + (i - (len(impls) - 1) / 2) * width for s in range(len(shapes))]
        ys = [values.get((shape, impl), 0.0) for shape in shapes]
        bars = ax.bar(xs, ys, width, label=impl)
        ax.bar_label(bars, labels=[f"{values[(s, impl)]:.3g}" if (s, impl) in values else "n/a"
                                   for s in shapes], fontsize=7, padding=1)
    ax.set_xticks(range(len(shapes)), shapes)
    ax.set_xlabel("shape")
    ax.set_ylabel(label)
    ax.set_title(bench)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside the bars
    ax.margins(y=0.12)
    path = out_dir / (re.sub(r"[^A-Za-z0-9]+", "_", bench).strip("_") + ".png")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("jsonl", help="file of JSON lines, or - for stdin")
    ap.add_argument("--out", type=Path, help="folder for the PNGs (default: the file's folder)")
    args = ap.parse_args()
    if args.jsonl == "-":
        rows, out_dir = read_rows(sys.stdin), args.out or Path(".")
    else:
        with open(args.jsonl) as f:
            rows = read_rows(f)
        out_dir = args.out or Path(args.jsonl).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    by_bench: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_bench[row["bench"]].append(row)
    for bench, bench_rows in by_bench.items():
        path = chart(bench, bench_rows, out_dir)
        print(f"{bench}: {path or 'no metric, no chart'}")


if __name__ == "__main__":
    main()
