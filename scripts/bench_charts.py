#!/usr/bin/env python3
"""Charts and the ratio table from criterion's results (python3 stdlib only).

Reads <criterion dir>/**/new/{benchmark,estimates}.json as written by
`cargo bench`, writes docs/bench/scaling.svg and docs/bench/concurrency.svg, and
prints the Markdown ratio table that BENCHMARKS.md quotes.

    python3 scripts/bench_charts.py [CRITERION_DIR]

CRITERION_DIR defaults to $CARGO_TARGET_DIR/criterion, else target/criterion.
"""

import json
import os
import sys
from pathlib import Path

CONTENDERS = ["async-worker-pool", "semaphore", "deadpool", "bb8"]
COLOURS = {
    "async-worker-pool": "#d62728",
    "semaphore": "#7f7f7f",
    "deadpool": "#1f77b4",
    "bb8": "#2ca02c",
}
ROUNDS = 100  # acquires per task in the contended groups (benches/contended.rs)
REPO = Path(__file__).resolve().parent.parent
# Groups whose baseline is a raw-socket client, not the pools above.
SOCKET_GROUPS = ["socket_dispatch"]


def load(criterion_dir):
    """{(group, function, parameter or None): median in ns}."""
    medians = {}
    for bench in criterion_dir.glob("**/new/benchmark.json"):
        meta = json.loads(bench.read_text())
        estimates = json.loads((bench.parent / "estimates.json").read_text())
        key = (meta["group_id"], meta["function_id"], meta.get("value_str"))
        medians[key] = estimates["median"]["point_estimate"]
    return medians


def fmt_ns(ns):
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.1f} ns"


def ratio_table(medians):
    """Markdown: per case, this crate's median and how it compares."""
    lines = [
        "| group | case | async-worker-pool | ÷ semaphore | deadpool ÷ this | bb8 ÷ this |",
        "|---|---|---|---|---|---|",
    ]
    cases = sorted(
        {
            (g, p)
            for (g, f, p) in medians
            if f == "async-worker-pool" and g not in SOCKET_GROUPS
        },
        key=lambda gp: (
            ["acquire_release", "contended", "concurrency", "scaling"].index(gp[0])
            if gp[0] in ["acquire_release", "contended", "concurrency", "scaling"]
            else 9,
            param_order(gp[1]),
        ),
    )
    for group, param in cases:
        ours = medians[(group, "async-worker-pool", param)]
        cells = []
        for other, inverse in [("semaphore", False), ("deadpool", True), ("bb8", True)]:
            theirs = medians.get((group, other, param))
            if theirs is None:
                cells.append("—")
            else:
                cells.append(f"{(theirs / ours if inverse else ours / theirs):.2f}×")
        lines.append(
            f"| {group} | {param or '—'} | {fmt_ns(ours)} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def socket_table(medians):
    """Markdown: events per second through the pool and the raw client."""
    lines = [
        "| group | body | async-worker-pool | raw-socket | this ÷ raw |",
        "|---|---|---|---|---|",
    ]
    for group in SOCKET_GROUPS:
        for body in ["64B", "64KiB"]:
            ours = medians.get((group, "async-worker-pool", body))
            raw = medians.get((group, "raw-socket", body))
            if ours is None or raw is None:
                continue
            # One iteration is one event, so the median is ns per event.
            lines.append(
                f"| {group} | {body} | {1e9 / ours:,.0f} events/s | "
                f"{1e9 / raw:,.0f} events/s | {raw / ours:.2f}× |"
            )
    return "\n".join(lines)


def param_order(param):
    if param is None:
        return 0
    if "x" in param:
        workers, connections = param.split("x")
        return int(workers) * int(connections)
    return int(param)


def line_chart(path, title, x_label, y_label, categories, series):
    """A small SVG line chart: one line per series over categorical x values."""
    width, height = 640, 400
    left, right, top, bottom = 80, 170, 50, 60
    plot_w, plot_h = width - left - right, height - top - bottom
    y_max = max((v for values in series.values() for v in values if v is not None), default=1)
    y_max *= 1.1
    step = plot_w / max(len(categories) - 1, 1)

    def x(i):
        return left + i * step

    def y(v):
        return top + plot_h - v / y_max * plot_h

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="24" text-anchor="middle" font-size="15">{title}</text>',
    ]
    for tick in range(6):
        value = y_max * tick / 5
        out.append(
            f'<line x1="{left}" y1="{y(value):.1f}" x2="{left + plot_w}" y2="{y(value):.1f}" '
            'stroke="#e5e5e5"/>'
        )
        out.append(
            f'<text x="{left - 6}" y="{y(value) + 4:.1f}" text-anchor="end">{value:.0f}</text>'
        )
    out.append(
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
        'stroke="black"/>'
    )
    out.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="black"/>')
    for i, category in enumerate(categories):
        out.append(
            f'<text x="{x(i):.1f}" y="{top + plot_h + 18}" text-anchor="middle">{category}</text>'
        )
    out.append(
        f'<text x="{left + plot_w / 2}" y="{height - 15}" text-anchor="middle">{x_label}</text>'
    )
    out.append(
        f'<text x="18" y="{top + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 18 {top + plot_h / 2})">{y_label}</text>'
    )
    for n, (name, values) in enumerate(series.items()):
        colour = COLOURS.get(name, "black")
        points = [(x(i), y(v)) for i, v in enumerate(values) if v is not None]
        weight = 3 if name == "async-worker-pool" else 1.5
        if points:
            path_points = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
            out.append(
                f'<polyline points="{path_points}" fill="none" stroke="{colour}" '
                f'stroke-width="{weight}"/>'
            )
            for px, py in points:
                out.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{colour}"/>')
        legend_y = top + 10 + n * 20
        out.append(
            f'<line x1="{left + plot_w + 15}" y1="{legend_y}" x2="{left + plot_w + 40}" '
            f'y2="{legend_y}" stroke="{colour}" stroke-width="{weight}"/>'
        )
        out.append(f'<text x="{left + plot_w + 46}" y="{legend_y + 4}">{name}</text>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


def main():
    if len(sys.argv) > 1:
        criterion_dir = Path(sys.argv[1])
    else:
        target = os.environ.get("CARGO_TARGET_DIR", str(REPO / "target"))
        criterion_dir = Path(target) / "criterion"
    medians = load(criterion_dir)
    if not medians:
        sys.exit(f"no criterion results under {criterion_dir}; run cargo bench first")
    out_dir = REPO / "docs" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)

    shapes = ["1x1", "1x1000", "4x1000", "16x1000"]
    line_chart(
        out_dir / "scaling.svg",
        "Acquire + release against pool size (half the slots busy)",
        "slots (workers x connections)",
        "ns per acquire + release (median)",
        shapes,
        {c: [medians.get(("scaling", c, s)) for s in shapes] for c in CONTENDERS},
    )

    tasks = ["1", "4", "16", "64"]
    line_chart(
        out_dir / "concurrency.svg",
        "Acquire + yield + release on 16 slots, 2 threads",
        "concurrent tasks",
        "ns per acquire (median)",
        tasks,
        {
            c: [
                (lambda v, t=t: None if v is None else v / (int(t) * ROUNDS))(
                    medians.get(("concurrency", c, t))
                )
                for t in tasks
            ]
            for c in CONTENDERS
        },
    )
    print(ratio_table(medians))
    print()
    print(socket_table(medians))


if __name__ == "__main__":
    main()
