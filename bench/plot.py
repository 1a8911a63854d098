"""Render docs/img/latency-vs-load.png from bench/results/*.json:
left, closed-loop TCP latency (p50 and p99) against throughput as clients
grow, np-social next to the line-echo baseline; right, broker delivery
latency against offered messages/s, with the 20 ms p99 target."""
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bench.common import RESULTS, ROOT  # noqa: E402

OUT = os.path.join(ROOT, "docs", "img", "latency-vs-load.png")


def load(name):
    try:
        with open(os.path.join(RESULTS, f"{name}.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def render(out=OUT):
    login, app, broker = load("login"), load("app"), load("broker")
    summary = load("summary") or {}
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 6.6), gridspec_kw={"width_ratios": [1.45, 1]})
    series = []
    if login:
        series += [("echo baseline", [r for r in login["rows"] if r["key"] == "echo"], "tab:gray"),
                   ("login server: list-friend TOKEN", [r for r in login["rows"] if r["key"] == "token"], "tab:blue"),
                   ("login server: cached login", [r for r in login["rows"] if r["key"] == "login"], "tab:cyan")]
    if app:
        series += [("app server + store: list-friend", [r for r in app["rows"] if r["key"] == "list-friend"],
                    "tab:orange"),
                   ("app server + store: post", [r for r in app["rows"] if r["key"] == "post"], "tab:red")]
    for label, rows, color in series:
        rows = sorted(rows, key=lambda r: r["clients"])
        x = [r["req/s"] for r in rows]
        left.plot(x, [r["p50 ms"] for r in rows], "o-", color=color, label=f"{label} (p50)")
        left.plot(x, [r["p99 ms"] for r in rows], "s--", color=color, alpha=0.7, label=f"{label} (p99)")
        for r in rows:
            left.annotate(f"{r['clients']}", (r["req/s"], r["p50 ms"]), textcoords="offset points",
                          xytext=(4, -11), fontsize=8, color=color)
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("throughput, requests/s (log)  -  numbers at the points: concurrent clients")
    left.set_ylabel("latency, ms (log)")
    left.set_title("TCP, closed loop: latency vs load")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=7.5, loc="upper left", ncol=1)
    if broker:
        rows = sorted((r for r in broker["rows"] if r["kind"] == "send"), key=lambda r: r["rate"])
        x = [r["rate"] for r in rows]
        right.plot(x, [r["delivery p50 ms"] for r in rows], "o-", color="tab:green", label="send -> received (p50)")
        right.plot(x, [r["delivery p99 ms"] for r in rows], "s--", color="tab:green", label="send -> received (p99)")
        right.plot(x, [r["reply p50 ms"] for r in rows], "o-", color="tab:purple", label="send -> Success! (p50)")
        right.plot(x, [r["reply p99 ms"] for r in rows], "s--", color="tab:purple", label="send -> Success! (p99)")
        raw = sorted((r for r in broker["rows"] if r["kind"] == "raw"), key=lambda r: r["rate"])
        if raw:
            right.plot([r["rate"] for r in raw], [r["delivery p99 ms"] for r in raw], "^:", color="black",
                       label="baseline: ActiveMQ alone, stomp.py (p99)")
        echo = sorted((r for r in broker["rows"] if r["kind"] == "echo"), key=lambda r: r["rate"])
        if echo:
            right.plot([r["rate"] for r in echo], [r["reply p99 ms"] for r in echo], "v:", color="tab:gray",
                       label="baseline: TCP echo, same open loop (p99)")
        right.axhline(20, color="tab:red", lw=1, ls=":", label="target: p99 < 20 ms at 1,000/s")
        right.set_xscale("log")
        right.set_yscale("log")
        right.set_xticks(x)
        right.set_xticklabels([str(v) for v in x])
        right.set_xlabel("offered load, messages/s (open loop)")
        right.set_ylabel("latency, ms (log)")
        right.set_title("Broker: send through ActiveMQ")
        right.grid(True, which="both", alpha=0.3)
        right.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    m = summary.get("machine", {})
    fig.suptitle(f"np-social latency against load - {m.get('date', '')}, {m.get('nproc', '?')} CPUs, "
                 f"Python {m.get('python', '?')}; medians of {summary.get('config', {}).get('rounds', '?')} "
                 "alternating rounds", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


if __name__ == "__main__":
    import sys
    sys.path.insert(0, ROOT)
    print(render())
