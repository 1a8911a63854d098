#!/usr/bin/env python3
"""Markdown tables from bench/results/*.json (for docs/performance.md).

    python bench/report.py            print every table
    python bench/report.py login      one benchmark's table
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import _fmt  # noqa: E402

RESULTS = os.path.join(ROOT, "bench", "results")

COLUMNS = {
    "login": ["clients", "subject", "req/s", "x echo", "p50 ms", "p99 ms", "cpu us/req", "errors"],
    "app": ["clients", "subject", "req/s", "x echo", "p50 ms", "p99 ms", "cpu us/req", "errors"],
    "durability": ["write", "durability", "writes/s", "p50 ms", "p99 ms", "cpu us/write", "errors"],
    "broker": ["load", "messages", "answered Success!", "delivered", "lost", "reply p50 ms", "reply p99 ms",
               "delivery p50 ms", "delivery p99 ms", "all 50 p50 ms", "all 50 p99 ms"],
    "hub": ["subject", "per s", "x echo", "p50 ms", "p99 ms", "cpu us/msg", "lost"],
    "scale": ["measure", "value"],
    "scaleout": ["server", "logins", "p50 ms", "min ms", "max ms", "each ms"],
}


def fmt(v):
    return _fmt(v, none="–", no="**no**")


def md(columns, rows):
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(out)


def load(name):
    with open(os.path.join(RESULTS, f"{name}.json")) as f:
        return json.load(f)


def table(name):
    data = load(name)
    rows = data["rows"]
    text = md(COLUMNS[name], rows)
    if data.get("date"):
        text += f"\n\n<sub>run of {data['date']}; medians of alternating rounds; every round in bench/results/{name}.json</sub>"
    return text


def summary():
    data = load("summary")
    rows = []
    for fig in data["figures"]:
        met = fig.get("met")
        rows.append({"figure": fig["figure"], "measured": fig.get("measured"), "target": fig.get("target"),
                     "met": "info" if fig.get("info") else met,
                     "measured / target": fig.get("ratio_to_target")})
    return md(["figure", "measured", "target", "met", "measured / target"], rows)


def main(argv):
    names = argv or list(COLUMNS) + ["summary"]
    for name in names:
        print(f"\n### {name}\n")
        print(summary() if name == "summary" else table(name))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
