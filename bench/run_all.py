#!/usr/bin/env python3
"""Run every np-social benchmark: `./bench/run` (or `python bench/run_all.py`).

    ./bench/run                 all benchmarks (about 13 minutes on 2 cores)
    ./bench/run --quick         shorter windows, one round (a smoke run, ~4 min)
    ./bench/run --only login,hub
    ./bench/run --only hub_attack   the owner's login during a login flood (bench_hub_attack.py)
    ./bench/run --only snapshot   snapshots vs the tree before (needs a checkout of 93d1b28 at
                                  /tmp/np-before or $NP_BENCH_SNAPSHOT_BEFORE; see bench_snapshot.py)
    ./bench/run --only chat       send -> printed and send-group, before issue 12 (349fc46) and after,
                                  each tree on a private ActiveMQ of its own (bench_chat.py)

Each benchmark prints a table and writes bench/results/NAME.json; the run
ends with the table of every figure against its target
(bench/results/summary.json) and renders docs/img/latency-vs-load.png.
Needs ActiveMQ (started here through scripts/activemq.sh ensure) and the
bench-only packages of bench/requirements.txt (matplotlib, for the plot).
"""
import argparse
import importlib
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# The benchmarks' servers use an ActiveMQ of their own, started here before
# anything reads its address (tests/broker_instance.py: a private instance
# on a free port, with credentials; never the machine's broker).
from tests import broker_instance  # noqa: E402

if __name__ == "__main__":
    broker_instance.start_for_run()

from bench import common  # noqa: E402

# (bench_broker.py's run, clients subscribed to the broker themselves, ended with
# issue 12: bench_chat.py measures send -> printed before and after it.)
ORDER = ("login", "app", "durability", "hub", "hub_attack", "scale", "scaleout", "snapshot", "hostile",
         "chat")


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(ORDER), help="comma-separated subset of " + ",".join(ORDER))
    ap.add_argument("--quick", action="store_true", help="1 round, short windows")
    ap.add_argument("--duration", type=float, help="seconds measured per load point (default 2)")
    ap.add_argument("--rounds", type=int, help="alternating rounds per comparison (default 3)")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        common.CFG.quick, common.CFG.rounds, common.CFG.duration, common.CFG.warmup = True, 1, 1.0, 0.3
    if args.duration:
        common.CFG.duration = args.duration
    if args.rounds:
        common.CFG.rounds = args.rounds
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(names) - set(ORDER)
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    if {"app", "durability", "scale", "scaleout", "hostile"} & set(names):
        broker_instance.current().wait_ready()
    facts = common.machine_facts()
    print(f"np-social benchmarks {facts['date']}: {facts['nproc']} CPUs ({facts['cpu']}), "
          f"{facts['memory_gib']} GiB, Python {facts['python']}, load {facts['loadavg_at_start']}",
          flush=True)
    started = time.monotonic()
    results, figures, failed = {}, [], []
    for name in ORDER:
        if name not in names:
            # not run now: keep the figures of its last run in the summary
            earlier = os.path.join(common.RESULTS, f"{name}.json")
            if os.path.exists(earlier):
                import json
                with open(earlier) as f:
                    old = json.load(f)
                figures += [dict(fig, note=(fig.get("note") or "") + f" (earlier run {old.get('date', '?')})")
                            for fig in old.get("figures", [])]
            continue
        t0 = time.monotonic()
        try:
            mod = importlib.import_module(f"bench.bench_{name}")
            results[name] = mod.run()
            figures += results[name].get("figures", [])
        except Exception as e:   # one broken benchmark must not hide the others
            import traceback
            traceback.print_exc()
            failed.append(name)
            figures.append({"figure": f"{name}: benchmark failed: {e!r}", "met": None})
        print(f"({name}: {time.monotonic() - t0:.0f} s)", flush=True)
    common.table("summary: every figure against its target",
                 ["figure", "measured", "target", "met", "ratio_to_target"], figures)
    summary = {"machine": facts, "figures": figures, "failed": failed,
               "seconds": round(time.monotonic() - started, 1),
               "config": {"duration": common.CFG.duration, "warmup": common.CFG.warmup,
                          "rounds": common.CFG.rounds, "quick": common.CFG.quick}}
    common.save("summary", summary)
    if not args.no_plot:
        try:
            from bench import plot
            print("plot:", plot.render())
        except ImportError as e:
            print(f"plot skipped ({e}); pip install -r bench/requirements.txt")
    print(f"total {time.monotonic() - started:.0f} s; results in {common.RESULTS}")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        status = main(sys.argv[1:])
    finally:
        broker_instance.stop_for_run()
    sys.exit(status)
