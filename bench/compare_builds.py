#!/usr/bin/env python3
"""A/B (or A/B/C) of one Google Benchmark program built from different trees, interleaved.

Each round runs every binary once, in turn, with the same filter; the rounds alternate, so slow
drift of a shared machine (other jobs, thermal state) falls on all sides alike. Per benchmark and
binary it reports the median of the rounds' real times, and the spread, and writes everything to
a JSON file. The environment is the measuring one: OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset,
OMP_NUM_THREADS = --threads, OMP_WAIT_POLICY=passive.

Run:
  bench/compare_builds.py --label old=/tmp/b-old/bench/bench_rotation \\
      --label new=build/bench/bench_rotation \\
      --filter 'BM_Backward/b:32/d:4096/N:2048' --threads 2 --rounds 5 --out results.json

How to read its output against the kept baselines: docs/benchmarks.md, "Comparing against the baseline".
"""
import argparse
import json
import os
import platform
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_host import measuring_env, run_benchmark_json  # noqa: E402


def run_once(binary, pattern, threads, min_time):
    report = run_benchmark_json(
        binary, [f"--benchmark_filter={pattern}", f"--benchmark_min_time={min_time}"],
        measuring_env(threads))
    scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}
    times = {}
    for bm in report["benchmarks"]:
        if bm.get("error_occurred"):
            raise SystemExit(f"{binary}: {bm['name']}: {bm.get('error_message')}")
        times[bm["name"]] = bm["real_time"] * scale[bm["time_unit"]]
    return times, report.get("context", {})


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--label", action="append", required=True, metavar="NAME=BINARY",
                   help="a build to compare (repeat; at least two)")
    p.add_argument("--filter", required=True, help="Google Benchmark filter (regex)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--min-time", type=float, default=0.5)
    p.add_argument("--out", required=True, help="JSON output")
    a = p.parse_args()
    builds = []
    for item in a.label:
        name, sep, binary = item.partition("=")
        if not sep or not name or not os.access(binary, os.X_OK):
            raise SystemExit(f"--label {item!r}: expected NAME=BINARY with an executable BINARY")
        builds.append((name, binary))
    if len(builds) < 2:
        raise SystemExit("give at least two --label builds")

    load_before = os.getloadavg()
    rounds, context = [], {}
    for r in range(a.rounds):
        print(f"[compare_builds] round {r + 1}/{a.rounds}", file=sys.stderr, flush=True)
        this_round = {}
        for name, binary in builds:
            this_round[name], context = run_once(binary, a.filter, a.threads, a.min_time)
        rounds.append(this_round)
    load_after = os.getloadavg()

    names = sorted({bm for rnd in rounds for build in rnd.values() for bm in build})
    summary = {}
    width = max(len(n) for n in names)
    print(f"{'benchmark':{width}s} " + " ".join(f"{b:>12s}" for b, _ in builds) +
          f"   {builds[-1][0]}/{builds[0][0]}")
    for bm in names:
        medians = {}
        for build, _ in builds:
            values = [rnd[build][bm] for rnd in rounds if bm in rnd[build]]
            medians[build] = statistics.median(values) if values else None  # absent in a build
            summary.setdefault(bm, {})[build] = {"median_ms": medians[build], "rounds_ms": values}
        first, last = medians[builds[0][0]], medians[builds[-1][0]]
        ratio = f"{last / first:.3f}" if first and last else "-"
        cells = [f"{medians[b]:10.3f}ms" if medians[b] is not None else f"{'-':>12s}"
                 for b, _ in builds]
        print(f"{bm:{width}s} " + " ".join(cells) + f"   {ratio}")
    print(f"medians of {a.rounds} interleaved rounds, {a.threads} threads; load average "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after")
    with open(a.out, "w") as f:
        json.dump({"builds": dict(builds), "filter": a.filter, "threads": a.threads,
                   "rounds": a.rounds, "loadavg_before": load_before, "loadavg_after": load_after,
                   "machine": platform.machine(), "context": context, "results": summary}, f,
                  indent=2)


if __name__ == "__main__":
    main()
