#!/usr/bin/env python3
"""Small calls of oft.torch.rotate: forward + backward (dX and dtheta) on the CPU.

What a small call costs beyond its arithmetic (operator construction, theta -> R, Python and
dispatch overhead): d = --features (default 1024), b = --block-size (default 32), PEFT's default
parameterization (Neumann, T = 5), float32, N in --tokens (default 1, 4, 16, 64) rows. For each N,
--repeats (default 2000) timed calls after 50 warm-up calls; the median (and the 10th and 90th
percentiles) in microseconds. Threads: torch.set_num_threads and oft.set_num_threads (--threads,
default 2).

Before/after comparisons run this script alternately against two installs of the package (e.g.
PYTHONPATH=/path/to/other/install), several times each, and take the median of the medians. Run it
with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset:

  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/python_small_calls.py --json out.json
"""
import argparse
import json
import statistics
import time

import torch

import oft
import oft.torch


def measure(d, b, n, repeats, warmup=50):
    torch.manual_seed(0)
    x = torch.randn(n, d, requires_grad=True)
    theta = (0.1 * torch.randn(d // b, b * (b - 1) // 2)).requires_grad_()
    dy = torch.randn(n, d)
    samples = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        y = oft.torch.rotate(x, theta, b, policy="peft_neumann", num_terms=5)
        y.backward(dy)
        elapsed = time.perf_counter() - start
        x.grad = None
        theta.grad = None
        if i >= warmup:
            samples.append(elapsed * 1e6)
    samples.sort()
    return {"median_us": statistics.median(samples),
            "p10_us": samples[len(samples) // 10], "p90_us": samples[9 * len(samples) // 10]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--features", type=int, default=1024)
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    oft.set_num_threads(args.threads)
    results = []
    for n in args.tokens:
        r = measure(args.features, args.block_size, n, args.repeats)
        r.update(features=args.features, block_size=args.block_size, tokens=n)
        results.append(r)
        print(f"d={args.features} b={args.block_size} N={n:4d}: median {r['median_us']:9.1f} us "
              f"(p10 {r['p10_us']:.1f}, p90 {r['p90_us']:.1f})", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"oft_file": oft.__file__, "torch": torch.__version__, "results": results}, f,
                      indent=1)


if __name__ == "__main__":
    main()
