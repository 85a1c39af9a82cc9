#!/usr/bin/env python3
"""PEFT's OFT Linear against the same layer accelerated by oft.peft.accelerate, on the CPU.

One process, both sides interleaved sample by sample, medians reported. Shapes: d = n_out in
--dims (default 1024, 4096), b = 32, --tokens (default 2048) tokens, PEFT's default policy
(Neumann, T = 5 = oft's k = 3), --dtype float32 (default) or bfloat16. With bfloat16 the base
layer, the input and the upstream gradient are bfloat16 and the adapter weight stays float32
(PEFT's default for a bfloat16 model): PEFT casts the input to float32 for the rotation and back,
oft runs its bfloat16 kernels on it (oft.torch.get_bf16_arithmetic() says which arithmetic).
Two measurements per shape:

  layer     forward + backward of the whole PEFT OFT Linear (rotation + frozen base GEMM),
            gradients for the input and theta, as in training;
  rotation  forward + backward of the rotation alone (OFTRotationModule).

Memory kept for the backward: the bytes of every tensor autograd saves between forward and
backward (torch.autograd.graph.saved_tensors_hooks, each storage counted once).

Threads: torch.set_num_threads(T) and oft.set_num_threads(T) (--threads, default 2), so both run
T threads. Run it with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset (this machine presets them):

  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/compare_python.py \\
      --out bench/results/latest/compare_python.json
"""
import argparse
import copy
import json
import os
import platform
import statistics
import time

import torch
from peft import OFTConfig, get_peft_model

import oft
import oft.peft


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def has_avx512():
    try:
        with open("/proc/cpuinfo") as f:
            return "avx512f" in f.read()
    except OSError:
        return False


def saved_bytes(run):
    """Bytes of the tensors autograd saves during run() (each storage once)."""
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    return sum(storages.values()), out


def make_layers(d, b, dtype):
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(d, d, bias=True)).to(dtype)
    model = get_peft_model(base, OFTConfig(r=0, oft_block_size=b, target_modules=["0"],
                                           use_cayley_neumann=True, num_cayley_neumann_terms=5))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "oft_" in name:
                p.normal_(0, 0.02)
    fast = copy.deepcopy(model)
    oft.peft.accelerate(fast)
    return model.base_model.model[0], fast.base_model.model[0]


def step_fn(module, x, dz):
    def run():
        inp = x.detach().requires_grad_()
        y = module(inp)
        return y, inp

    def step():
        y, inp = run()
        y.backward(dz)
        return inp.grad

    return run, step


def bench(args):
    rows = []
    for d in args.dims:
        dtype = getattr(torch, args.dtype)
        peft_layer, oft_layer = make_layers(d, args.block, dtype)
        x = torch.randn(args.tokens, d).to(dtype)
        dz = torch.randn(args.tokens, d).to(dtype)
        # float32: the same math to float rounding; bfloat16: within 4 roundings (2^-6).
        tolerance = 1e-5 if dtype == torch.float32 else 2.0**-6
        sides = {
            ("layer", "peft"): peft_layer, ("layer", "oft"): oft_layer,
            ("rotation", "peft"): peft_layer.oft_R["default"],
            ("rotation", "oft"): oft_layer.oft_R["default"],
        }
        # Same outputs, or the timing means nothing.
        for what in ("layer", "rotation"):
            with torch.no_grad():
                a = sides[(what, "oft")](x)
                ref = sides[(what, "peft")](x)
            err = ((a.double() - ref.double()).abs().max() / ref.double().abs().max()).item()
            assert err < tolerance, f"{what} d={d}: oft and PEFT differ by {err}"
        steps = {key: step_fn(m, x, dz) for key, m in sides.items()}
        memory = {key: saved_bytes(lambda: s[0]())[0] for key, s in steps.items()}
        for s in steps.values():  # warm up
            s[1]()
        times = {key: [] for key in steps}
        for _ in range(args.reps):
            for key, s in steps.items():  # interleaved
                for p in list(sides[key].parameters()):
                    p.grad = None
                t0 = time.perf_counter()
                s[1]()
                times[key].append(time.perf_counter() - t0)
        for what in ("layer", "rotation"):
            tp = statistics.median(times[(what, "peft")]) * 1e3
            to = statistics.median(times[(what, "oft")]) * 1e3
            rows.append(dict(what=what, d=d, n_out=d, b=args.block, tokens=args.tokens,
                             dtype=args.dtype,
                             peft_ms=tp, oft_ms=to, speedup=tp / to,
                             peft_saved_mib=memory[(what, "peft")] / 2**20,
                             oft_saved_mib=memory[(what, "oft")] / 2**20,
                             peft_samples_ms=[t * 1e3 for t in times[(what, "peft")]],
                             oft_samples_ms=[t * 1e3 for t in times[(what, "oft")]]))
            r = rows[-1]
            print(f"{what:8s} d={d:5d}: PEFT {tp:8.2f} ms  oft {to:8.2f} ms  ({tp / to:.2f}x); "
                  f"saved for backward PEFT {r['peft_saved_mib']:.1f} MiB, oft "
                  f"{r['oft_saved_mib']:.1f} MiB", flush=True)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dims", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--block", type=int, default=32)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--out", help="JSON file for the results")
    args = p.parse_args()
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if var in os.environ:
            print(f"warning: {var}={os.environ[var]} is set (unset it when measuring)")
    torch.set_num_threads(args.threads)
    oft.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows = bench(args)
    meta = dict(cpu=cpu_model(), avx512=has_avx512(), torch=torch.__version__,
                peft=__import__("peft").__version__, threads=args.threads, reps=args.reps,
                dtype=args.dtype, bf16_arithmetic=oft.torch.get_bf16_arithmetic(),
                loadavg_before=load_before, loadavg_after=os.getloadavg(),
                torch_config=torch.__config__.parallel_info().splitlines()[:6])
    print(f"{meta['cpu']} (AVX-512: {meta['avx512']}), {args.dtype}, torch {meta['torch']}, "
          f"peft {meta['peft']}, "
          f"{args.threads} threads, load {load_before[0]:.2f} -> {meta['loadavg_after'][0]:.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
