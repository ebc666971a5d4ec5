#!/usr/bin/env python3
"""Draws a soak run's minute reports (the CSV of `sh scripts/soak.sh DURATION
CSV`) as an SVG of three panels: resident memory of the gateway and of its
workers, the gateway's open descriptors, and requests per second with the
answers that were not 200. Standard library only.

    python3 scripts/soak_plot.py soak.csv docs/soak.svg
"""

import csv
import sys

WIDTH, PANEL, GAP, LEFT, RIGHT, TOP = 720, 150, 46, 70, 150, 30


def read(path):
    with open(path) as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def nice_top(value):
    """The smallest 1, 2, 2.5 or 5 times a power of ten at or above `value`."""
    best = None
    for power in range(-1, 7):
        for step in (1, 2, 2.5, 5):
            top = step * 10 ** power
            if top >= value and (best is None or top < best):
                best = top
    return best or 1


def panel(out, index, rows, title, unit, series):
    y0 = TOP + index * (PANEL + GAP)
    minutes = [r["minute"] for r in rows]
    x_min, x_max = 0, max(minutes)
    top = nice_top(max(max(r[key] for r in rows) for key, _, _ in series) * 1.15)

    def x(m):
        return LEFT + (m - x_min) / (x_max - x_min or 1) * (WIDTH - LEFT - RIGHT)

    def y(v):
        return y0 + PANEL - v / top * PANEL

    out.append('<text x="%d" y="%d" class="title">%s</text>' % (LEFT, y0 - 8, title))
    out.append('<rect x="%d" y="%d" width="%d" height="%d" class="frame"/>'
               % (LEFT, y0, WIDTH - LEFT - RIGHT, PANEL))
    for i in range(5):
        v = top * i / 4
        out.append('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" class="grid"/>'
                   % (LEFT, WIDTH - RIGHT, y(v), y(v)))
        out.append('<text x="%d" y="%.1f" class="tick" text-anchor="end">%g</text>'
                   % (LEFT - 6, y(v) + 4, round(v, 2)))
    step = max(1, int(x_max // 10))
    for m in range(0, int(x_max) + 1, step):
        out.append('<text x="%.1f" y="%d" class="tick" text-anchor="middle">%d</text>'
                   % (x(m), y0 + PANEL + 14, m))
    out.append('<text x="%d" y="%d" class="tick" transform="rotate(-90 %d %d)" '
               'text-anchor="middle">%s</text>'
               % (18, y0 + PANEL // 2, 18, y0 + PANEL // 2, unit))
    for n, (key, label, color) in enumerate(series):
        points = " ".join("%.1f,%.1f" % (x(r["minute"]), y(r[key])) for r in rows)
        out.append('<polyline points="%s" fill="none" stroke="%s" stroke-width="2"/>'
                   % (points, color))
        for r in rows:
            out.append('<circle cx="%.1f" cy="%.1f" r="2" fill="%s"/>'
                       % (x(r["minute"]), y(r[key]), color))
        ly = y0 + 14 + n * 18
        out.append('<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="%s" stroke-width="2"/>'
                   % (WIDTH - RIGHT + 10, WIDTH - RIGHT + 28, ly - 4, ly - 4, color))
        out.append('<text x="%d" y="%d" class="tick">%s</text>'
                   % (WIDTH - RIGHT + 32, ly, label))


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    rows = read(sys.argv[1])
    for r in rows:
        r["gateway_rss_mb"] = r["gateway_rss_kb"] / 1024
        r["workers_rss_mb"] = r["workers_rss_kb"] / 1024
        r["not_200"] = r["failed_as_asked"] + r["worker_killed"] + r["other"] + r["lost"]
        r["per_s_not_200"] = r["not_200"] / 60
        r["per_s_unexpected"] = (r["other"] + r["lost"]) / 60
    height = TOP + 3 * (PANEL + GAP) + 10
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
           'viewBox="0 0 %d %d" font-family="sans-serif">' % (WIDTH, height, WIDTH, height),
           '<style>.title{font-size:13px;font-weight:bold}.tick{font-size:11px;fill:#333}'
           '.frame{fill:none;stroke:#999}.grid{stroke:#e5e5e5}</style>',
           '<rect width="100%" height="100%" fill="white"/>']
    panel(out, 0, rows, "Resident memory (minute reports)", "MiB",
          [("gateway_rss_mb", "gateway", "#1f77b4"),
           ("workers_rss_mb", "2 workers", "#ff7f0e")])
    panel(out, 1, rows, "Gateway open file descriptors", "fds",
          [("fds", "gateway fds", "#2ca02c")])
    panel(out, 2, rows, "Requests per second (x axis: minutes)", "req/s",
          [("req_per_s", "answered", "#1f77b4"),
           ("per_s_not_200", "500/502 (asked, killed)", "#d62728"),
           ("per_s_unexpected", "lost or wrong", "#000000")])
    out.append("</svg>")
    with open(sys.argv[2], "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
