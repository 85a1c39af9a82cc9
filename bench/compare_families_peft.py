#!/usr/bin/env python3
"""BOFT, HRA and OFT layer steps through oft's Python face against Hugging Face PEFT's own layers
(and PEFT's LoRA, and the bare base Linear), on the CPU, in one interleaved run.

A step is one forward and backward of one adapted Linear layer (d = n_out = 4096, bias, the base
W0 frozen) on X [N = 2048, d] in float32 (or, with --dtype bfloat16, a bfloat16 model whose adapter
weights PEFT keeps in float32) for a fixed upstream gradient dY: dX and the adapter's
parameter gradients (PEFT's boft_R and boft_s, hra_u, OFT's weight, LoRA's A and B). Sides:

  peft boft m, peft hra r, peft oft b, peft lora r   PEFT 0.21.2's layers (get_peft_model on one
      nn.Linear). PEFT's BOFT forms the d x d butterfly densely; on a CPU without its fbd_cuda
      extension PEFT forces m = 1, so for m > 1 it gets a CPU stand-in of that extension (the
      block diagonal of [m, N, b, b] as [m, d, d], a Python loop of copies, negligible here).
  oft boft m, oft hra r, oft oft b    the same PEFT models after oft.peft.accelerate(model): PEFT's
      parameters and layer code around oft's rotation (no d x d matrix).
  base    the bare nn.Linear step (dX only).

Timing: every side's step once per round, in the same order, after one warm-up round; the median
over --rounds rounds (default 5). torch and oft use --threads threads (2). OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE are removed from the environment (the script restarts itself without them, before
torch loads OpenBLAS). Memory kept for backward: torch.autograd.graph.saved_tensors_hooks around one
forward, the distinct storages saved, less W0 and the adapter's parameters (which exist anyway);
oft's backward workspace, kept by its operator between steps, is added for the oft sides
(Butterfly: (m + 1) N d scalars plus a generator scratch; Householder: per thread, its partial dQ
and dT and four 64-row tile panels). Peak memory during
backward is not measured (the CPU allocator has no peak counter).

Run: python3 bench/compare_families_peft.py [--rounds 5] [--tokens 2048] [--features 4096]
         [--dtype float32|bfloat16]
Writes bench/results/zen4/families_peft.json (families_peft_bf16.json for bfloat16; --out to
change) and prints a table.
"""
import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
import warnings

from bench_host import cpu_name, restart_without_openblas_presets  # noqa: E402

restart_without_openblas_presets()

import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "families"))
from peft_fbd_stand_in import FbdStandIn  # noqa: E402  (PEFT's fbd_cuda on the CPU)


class OneLayer(torch.nn.Module):
    def __init__(self, base):
        super().__init__()
        self.proj = base

    def forward(self, x):
        return self.proj(x)


def peft_model(base, config):
    import peft
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(OneLayer(copy.deepcopy(base)), config)
    layer = model.base_model.model.proj
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial adapters (the inits give R = I or B = 0)
        for name, p in layer.named_parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn(p.shape, generator=gen))
    return model


def saved_bytes(forward, exclude):
    """Bytes of the distinct storages autograd saves in `forward`, less those of `exclude`."""
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = forward()
    skip = {p.untyped_storage().data_ptr() for p in exclude}
    return sum(n for ptr, n in storages.items() if ptr not in skip), y


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--features", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                    help="activations and base weights; adapter weights stay float32 in a "
                         "bfloat16 model, as PEFT keeps them (autocast_adapter_dtype)")
    ap.add_argument("--out", default=None,
                    help="JSON file (default bench/results/zen4/families_peft.json, "
                         "families_peft_bf16.json for --dtype bfloat16)")
    args = ap.parse_args()
    if args.out is None:
        suffix = "" if args.dtype == "float32" else "_bf16"
        args.out = os.path.join(ROOT, f"bench/results/zen4/families_peft{suffix}.json")
    dtype = getattr(torch, args.dtype)

    import peft
    import peft.tuners.boft.layer as boft_layer
    from peft import BOFTConfig, HRAConfig, LoraConfig, OFTConfig

    import oft
    import oft.peft

    torch.set_num_threads(args.threads)
    oft._core.set_num_threads(args.threads)
    boft_layer._FBD_CUDA = FbdStandIn
    d, n = args.features, args.tokens
    torch.manual_seed(0)
    base = torch.nn.Linear(d, d, bias=True).to(dtype)
    for p in base.parameters():
        p.requires_grad_(False)
    x = torch.randn(n, d).to(dtype)
    dy = torch.randn(n, d).to(dtype)

    configs = {}
    for m in (2, 4):
        configs[f"boft m={m} b=32"] = BOFTConfig(boft_block_size=32, boft_n_butterfly_factor=m,
                                                 target_modules=["proj"])
    for r in (8, 32):
        configs[f"hra r={r}"] = HRAConfig(r=r, target_modules=["proj"])
    configs["oft b=32"] = OFTConfig(r=0, oft_block_size=32, target_modules=["proj"])
    sides = {}  # name -> (model, accelerated)
    for name, config in configs.items():
        model = peft_model(base, config)
        sides[f"peft {name}"] = model
        fast = copy.deepcopy(model)
        oft.peft.accelerate(fast)
        sides[f"oft {name}"] = fast
    for r in (16, 32):
        sides[f"peft lora r={r}"] = peft_model(base, LoraConfig(r=r, target_modules=["proj"]))
    sides["base"] = OneLayer(base)

    def step(model):
        xx = x.detach().requires_grad_()
        y = model(xx)
        y.backward(dy)
        for p in model.parameters():
            p.grad = None
        return xx

    # Checks outside the timed loop: the oft side's y and gradients are PEFT's.
    checks = {}
    for name in configs:
        ref, fast = sides[f"peft {name}"], sides[f"oft {name}"]
        xa, xb = x.detach().requires_grad_(), x.detach().requires_grad_()
        ya, yb = ref(xa), fast(xb)
        ya.backward(dy)
        yb.backward(dy)
        rel = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
        ga = {k: p.grad for k, p in ref.named_parameters() if p.grad is not None}
        gb = {k: p.grad for k, p in fast.named_parameters() if p.grad is not None}
        checks[name] = {"y": rel(yb, ya), "dX": rel(xb.grad, xa.grad),
                        **{k.replace("base_model.model.proj.", ""): rel(gb[k], ga[k])
                           for k in ga}}
        for model in (ref, fast):
            for p in model.parameters():
                p.grad = None
        print(f"[check] {name}: " + ", ".join(f"{k} {v:.1e}" for k, v in checks[name].items()),
              flush=True)

    memory = {}
    for name, model in sides.items():
        params = [p for p in model.parameters()]
        xx = x.detach().requires_grad_()
        nbytes, y = saved_bytes(lambda: model(xx), params + [x])
        y.backward(dy)
        for p in model.parameters():
            p.grad = None
        memory[name] = nbytes + x.numel() * x.element_size()  # X itself is saved by every side
    for name in configs:
        key = f"oft {name}"
        if name.startswith("boft"):
            m = int(name.split("m=")[1].split()[0])
            memory[key] += (m + 1) * n * d * 4  # the factor inputs and the gradient, float32
        elif name.startswith("hra"):
            r = int(name.split("r=")[1])
            # per thread: partial dQ and dT, and four 64-row tile panels (independent of N)
            memory[key] += args.threads * (d * r + r * r + 4 * 64 * r) * 4

    names = list(sides)
    times = {k: [] for k in names}
    for round_ in range(args.rounds + 1):
        for name in names:
            t0 = time.perf_counter()
            step(sides[name])
            elapsed = time.perf_counter() - t0
            if round_ > 0:
                times[name].append(elapsed * 1e3)
        print(f"[round {round_}/{args.rounds}] " + ", ".join(
            f"{k} {times[k][-1]:.0f}" for k in names if times[k]), flush=True)

    median = {k: statistics.median(v) for k, v in times.items()}
    lora16 = median["peft lora r=16"]
    rows = []
    for name in names:
        row = {"side": name, "median_ms": median[name], "times_ms": times[name],
               "saved_for_backward_MiB": memory[name] / 2**20,
               "vs_peft_lora_r16": median[name] / lora16,
               "vs_base": median[name] / median["base"]}
        if name.startswith("oft "):
            row["peft_over_oft"] = median["peft " + name[4:]] / median[name]
        rows.append(row)

    result = {
        "what": "one adapted Linear layer step (forward + backward, dX and adapter grads, W0 "
                f"frozen), {args.dtype}, oft through oft.peft.accelerate vs PEFT's own layers",
        "dtype": args.dtype,
        "cpu": cpu_name(), "threads": args.threads, "features": d, "n_out": d, "tokens": n,
        "rounds": args.rounds, "torch": torch.__version__, "peft": peft.__version__,
        "python": platform.python_version(),
        "notes": ["PEFT's BOFT with m > 1 runs with a CPU stand-in for its fbd_cuda extension "
                  "(without it PEFT forces m = 1 on a CPU)",
                  "saved_for_backward: storages autograd saves in one forward (X included, W0 "
                  "and adapter parameters excluded), plus oft's persistent backward workspace",
                  "peak memory during backward: not measured (no CPU allocator peak counter)"],
        "parity": checks, "rows": rows,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")

    print(f"\n{cpu_name()}, {args.threads} threads, d = n_out = {d}, N = {n}, {args.dtype}, "
          f"median of {args.rounds} interleaved rounds")
    print(f"{'side':<22}{'ms':>10}{'x LoRA16':>10}{'x base':>9}{'PEFT/oft':>10}{'saved MiB':>11}")
    for row in rows:
        ratio = f"{row['peft_over_oft']:.1f}" if "peft_over_oft" in row else ""
        print(f"{row['side']:<22}{row['median_ms']:>10.1f}{row['vs_peft_lora_r16']:>10.2f}"
              f"{row['vs_base']:>9.2f}{ratio:>10}{row['saved_for_backward_MiB']:>11.0f}")
    print(f"wrote {os.path.relpath(args.out, ROOT)}")


if __name__ == "__main__":
    main()
