#!/usr/bin/env python3
"""LyCORIS's own diag-OFT and BOFT modules against oft's (oft.lycoris), training steps on the CPU,
in one interleaved run.

A step is one forward and backward of one adapted Linear layer (d = n_out = 4096, bias, the base
W0 frozen) on X [N = 2048, d] in float32 for a fixed upstream gradient dY: dX and the gradient of
oft_blocks. Sides:

  lycoris diag-oft b, lycoris boft b   lycoris-lora 4.1.3's DiagOFTModule and ButterflyOFTModule
      in their default (weight) mode, as LycorisNetwork wraps a layer: the base's forward plus the
      layer's operation with W' - W (two GEMMs each way), W' from its R (an explicit inverse per
      block) and einsums (BOFT: log2(N) + 1 stages of gathers and block products).
  oft diag-oft b, oft boft b           oft.lycoris.DiagOFT and BOFT with the same parameters: W'
      from oft's rotate kernel on W^T (one per stage), then one GEMM each way.
  base                                 the bare nn.Linear step (dX only).

Both sides start from the same random nonzero oft_blocks; the script checks, outside the timed
loop, that oft's y, dX and d oft_blocks are LyCORIS's (relative Frobenius differences, printed and
saved). Timing: every side's step once per round, in the same order, after one warm-up round; the
median over --rounds rounds (default 5). torch and oft use --threads threads (2).
OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are removed from the environment (the script restarts
itself without them, before torch loads OpenBLAS).

Run: python3 bench/compare_lycoris_modules.py [--rounds 5] [--tokens 2048] [--features 4096]
         [--block-size 32] [--out bench/results/xeon/lycoris_modules.json]
(with lycoris-lora 4.1.3 installed, e.g. the venv of scripts/peft_venv.sh).
"""
import argparse
import json
import os
import statistics
import sys
import time

from bench_host import cpu_name, restart_without_openblas_presets  # noqa: E402

restart_without_openblas_presets()

import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--features", type=int, default=4096)
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/xeon/lycoris_modules.json"))
    args = ap.parse_args()

    import lycoris
    from lycoris.modules.boft import ButterflyOFTModule
    from lycoris.modules.diag_oft import DiagOFTModule

    import oft
    import oft.lycoris as ol

    torch.set_num_threads(args.threads)
    oft._core.set_num_threads(args.threads)
    d, n, b = args.features, args.tokens, args.block_size
    torch.manual_seed(0)
    base = torch.nn.Linear(d, d, bias=True)
    for p in base.parameters():
        p.requires_grad_(False)
    x = torch.randn(n, d)
    dy = torch.randn(n, d)

    sides = {}
    pairs = {"diag-oft": (DiagOFTModule, ol.DiagOFT), "boft": (ButterflyOFTModule, ol.BOFT)}
    gen = torch.Generator().manual_seed(1)
    for algo, (theirs_cls, ours_cls) in pairs.items():
        theirs_base = torch.nn.Linear(d, d, bias=True)
        theirs_base.load_state_dict(base.state_dict())
        for p in theirs_base.parameters():
            p.requires_grad_(False)
        theirs = theirs_cls("lora_proj", theirs_base, multiplier=1.0, lora_dim=b)
        ours = ours_cls(base, theirs.block_size)
        assert theirs.oft_blocks.shape == ours.oft_blocks.shape, algo
        with torch.no_grad():
            theirs.oft_blocks.copy_(0.01 * torch.randn(theirs.oft_blocks.shape, generator=gen))
            ours.oft_blocks.copy_(theirs.oft_blocks)
        label = f"{algo} b={theirs.block_size}" + (
            f" m={ours.stages}" if algo == "boft" else "")
        sides[f"lycoris {label}"] = theirs
        sides[f"oft {label}"] = ours
    sides["base"] = base

    def step(module):
        xx = x.detach().requires_grad_()
        module(xx).backward(dy)
        for p in module.parameters():
            p.grad = None
        return xx

    checks = {}
    names = [k[len("oft "):] for k in sides if k.startswith("oft ")]
    for name in names:
        theirs, ours = sides[f"lycoris {name}"], sides[f"oft {name}"]
        xa, xb = x.detach().requires_grad_(), x.detach().requires_grad_()
        ya, yb = theirs(xa), ours(xb)
        ya.backward(dy)
        yb.backward(dy)
        rel = lambda a, c: ((a - c).norm() / c.norm()).item()  # noqa: E731
        checks[name] = {"y": rel(yb, ya), "dX": rel(xb.grad, xa.grad),
                        "oft_blocks": rel(ours.oft_blocks.grad, theirs.oft_blocks.grad)}
        for module in (theirs, ours):
            for p in module.parameters():
                p.grad = None
        print(f"[check] {name}: " + ", ".join(f"{k} {v:.1e}" for k, v in checks[name].items()),
              flush=True)

    times = {name: [] for name in sides}
    for _ in range(1):  # warm-up round
        for module in sides.values():
            step(module)
    for r in range(args.rounds):
        for name, module in sides.items():
            start = time.perf_counter()
            step(module)
            times[name].append(time.perf_counter() - start)
        print(f"[round {r + 1}/{args.rounds}] " + ", ".join(
            f"{k} {v[-1] * 1e3:.0f} ms" for k, v in times.items()), flush=True)

    medians = {name: statistics.median(v) for name, v in times.items()}
    print(f"\n{cpu_name()}, {args.threads} threads, N = {n}, d = {d}, float32; median of "
          f"{args.rounds} interleaved rounds")
    print(f"{'side':32s} {'step ms':>9s} {'over base':>10s} {'LyCORIS / oft':>14s}")
    for name, t in medians.items():
        ratio = ""
        if name.startswith("oft "):
            ratio = f"{medians['lycoris ' + name[4:]] / t:.2f}x"
        print(f"{name:32s} {t * 1e3:9.1f} {t / medians['base']:9.2f}x {ratio:>14s}")
    result = {
        "machine": cpu_name(), "threads": args.threads, "tokens": n, "features": d,
        "block_size": b, "dtype": "float32", "rounds": args.rounds,
        "versions": {"torch": torch.__version__, "lycoris-lora": lycoris.__version__
                     if hasattr(lycoris, "__version__") else "4.1.3", "oft": oft.__version__},
        "median_s": medians, "all_s": times, "checks_relative": checks,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
