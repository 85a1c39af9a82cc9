#!/usr/bin/env python3
"""Compare a benchmark run against a baseline, benchmark by benchmark (Python stdlib only).

    python3 bench/compare.py BASELINE NEW [--threshold 0.05] [--filter REGEX]

BASELINE and NEW are each a Google Benchmark JSON file (--benchmark_out=...json) or a folder of
them (every *.json in it that is a Google Benchmark report; others are skipped). Benchmarks are
matched by name. For each, the median real time is taken: the `_median` aggregate when the run
has one (--benchmark_repetitions=N), else the median of the repetitions, else the single
iteration row. Printed per benchmark: old and new median, new / old, and `faster` or `slower`
when the ratio leaves [1 - threshold, 1 + threshold] (default 5%, about the spread of
repeated runs on a shared 2-core machine). Benchmarks present on one side only are listed
after the table. Exits 0 after a comparison, whatever it found (it reports; deciding is the
reader's job), as google-benchmark's tools/compare.py does; a file argument that is not a Google
Benchmark report is an error.

Example (the Zen 4 baseline against a new run of the rotation kernels):

    build-bench/bench/bench_rotation --benchmark_repetitions=5 \\
        --benchmark_out=/tmp/new.json --benchmark_out_format=json
    python3 bench/compare.py bench/results/zen4 /tmp/new.json
"""

import argparse
import json
import os
import re
import signal
import statistics
import sys

_UNIT_TO_NS = {"ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9}


def _load_report(path):
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        print(f"compare.py: skipping {path}: {e}", file=sys.stderr)
        return None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        return None  # not a Google Benchmark report (e.g. compare_torch.json)
    return data["benchmarks"]


def load_medians(path):
    """name -> (median real time in ns, source file) from a JSON file or a folder of them."""
    if os.path.isdir(path):
        files = sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(".json"))
    else:
        files = [path]
    medians, samples = {}, {}
    for file in files:
        rows = _load_report(file)
        if rows is None:
            if not os.path.isdir(path):
                sys.exit(f"compare.py: {file} is not a Google Benchmark JSON report")
            continue
        for row in rows:
            if row.get("error_occurred") or "real_time" not in row:
                continue
            ns = float(row["real_time"]) * _UNIT_TO_NS.get(row.get("time_unit", "ns"), 1.0)
            name = row.get("run_name") or row["name"]
            if row.get("run_type") == "aggregate":
                if row.get("aggregate_name") == "median":
                    if "run_name" not in row and name.endswith("_median"):
                        name = name[: -len("_median")]  # reports older than run_name
                    medians[name] = (ns, file)
            else:
                samples.setdefault(name, ([], file))[0].append(ns)
    for name, (values, file) in samples.items():
        medians.setdefault(name, (statistics.median(values), file))
    return medians


def _format_time(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.4g} {unit}"
    return f"{ns:.4g} ns"


def main(argv=None):
    p = argparse.ArgumentParser(
        description="Compare Google Benchmark medians of a new run against a baseline.",
        epilog="Example: python3 bench/compare.py bench/results/zen4 /tmp/new.json")
    p.add_argument("baseline", help="baseline JSON file or folder of JSON files")
    p.add_argument("new", help="new run's JSON file or folder")
    p.add_argument("--threshold", type=float, default=0.05,
                   help="relative change counted as noise (default 0.05 = 5%%)")
    p.add_argument("--filter", default=None, help="only benchmarks whose name matches this regex")
    a = p.parse_args(argv)

    old, new = load_medians(a.baseline), load_medians(a.new)
    keep = re.compile(a.filter).search if a.filter else (lambda _: True)
    common = [n for n in old if n in new and keep(n)]
    if not common:
        print("no benchmark names in common")
    width = max([len(n) for n in common] + [9])
    print(f"{'benchmark':<{width}}  {'old':>10}  {'new':>10}  {'new/old':>7}")
    faster = slower = 0
    for name in common:
        t_old, t_new = old[name][0], new[name][0]
        ratio = t_new / t_old if t_old > 0 else float("inf")
        mark = ""
        if ratio < 1 - a.threshold:
            mark, faster = "faster", faster + 1
        elif ratio > 1 + a.threshold:
            mark, slower = "slower", slower + 1
        print(f"{name:<{width}}  {_format_time(t_old):>10}  {_format_time(t_new):>10}  "
              f"{ratio:7.2f}  {mark}".rstrip())
    if common:
        ratios = [new[n][0] / old[n][0] for n in common if old[n][0] > 0]
        geomean = statistics.geometric_mean(ratios) if ratios else float("nan")
        print(f"{len(common)} compared: {faster} faster, {slower} slower, "
              f"{len(common) - faster - slower} within {a.threshold:.0%}; "
              f"geometric mean new/old {geomean:.3f}")
    only_old = sorted(n for n in old if n not in new and keep(n))
    only_new = sorted(n for n in new if n not in old and keep(n))
    if only_old:
        print(f"only in the baseline ({len(only_old)}): " + ", ".join(only_old[:10]) +
              (" ..." if len(only_old) > 10 else ""))
    if only_new:
        print(f"only in the new run ({len(only_new)}): " + ", ".join(only_new[:10]) +
              (" ..." if len(only_new) > 10 else ""))
    return 0


if __name__ == "__main__":
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # quiet when piped into head
    sys.exit(main())
