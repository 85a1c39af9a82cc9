#!/usr/bin/env python3
"""One OFT linear-layer training step on one GPU, three ways, in one run:

  peft   Hugging Face PEFT's own OFT Linear layer: get_peft_model(module wrapping
         nn.Linear(d, n_out, bias=False), OFTConfig(r=0, oft_block_size=b, use_cayley_neumann=True,
         num_cayley_neumann_terms=5, target_modules=["proj"])), PEFT's defaults otherwise
         (autocast_adapter_dtype: the adapter is fp32 when the layer is bf16, and PEFT casts the
         activations to fp32 for the rotation and back). The timed module is the injected layer.
  torch  the same math in plain PyTorch: theta (fp32) -> skew Q -> R = (I + Q)(I + Q + ... + Q^k)
         = I + 2Q + ... + 2Q^k + Q^(k+1) (k = 3 is PEFT's t = 5) -> R cast to the activation dtype
         -> input-centric rotation einsum('nrk,rkc->nrc') -> F.linear(Y, W0).
  oft    oft's CUDA backend: bench/cuda/bench_cuda (a subprocess writing Google Benchmark JSON)
         for the same shapes: cuda_layer_step (OftLinear set_generators + forward + backward),
         cuda_rotation_step (set_generators + apply + backward), cuda_base_step (cuBLAS, no
         rotation), cuda_apply and cuda_copy.

A step is forward + backward for a fixed upstream gradient dZ: dX and dtheta (W0 is frozen; the
PyTorch sides use torch.autograd.grad, so nothing accumulates). d = n_out = 4096, b in
{16, 32, 64}, tokens N in {4096, 16384}, bf16 and fp32 (fp32 matmuls without TF32 on both sides:
cuBLAS's default math mode in oft, torch.backends.cuda.matmul.allow_tf32 = False here).

Timing (PyTorch sides): CUDA events around `inner` back-to-back steps (inner chosen so that a
batch lasts about --batch-ms), median over --samples batches, the variants interleaved sample by
sample. bench_cuda times the same way (see bench/cuda/bench_cuda_common.cuh).

Rotation-only cost: for PEFT and plain PyTorch it is the full layer step minus a bare nn.Linear
step (same frozen W0, same x, dX only), timed in the same interleaved loop; for oft it is the
measured cuda_rotation_step (and, as a cross-check, cuda_layer_step - cuda_base_step).

Bytes kept for backward: PyTorch sides, torch.autograd.graph.saved_tensors_hooks around one
forward, summing untyped_storage().nbytes() of the distinct storages saved (reported with and
without the module's parameters W0 and theta); oft, the bench_cuda counter kept_bytes (X + theta +
R and its tensor-core copies).

Usage (GPU machine, python3 with torch and peft; see scripts/gpu/gpu_bench.sh):
  python3 bench/compare_peft.py --binary build-gpu/bench/cuda/bench_cuda --out OUT/compare_peft.json
  python3 bench/compare_peft.py --cpu-smoke        # CPU, tiny shapes, plain-PyTorch side only
"""
import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HEADLINE = {"dtype": "bf16", "b": 32, "N": 16384}  # the configuration the issue's targets name
TARGETS = (
    "rotation fwd+bwd >= 3x faster than PEFT's at b=32, bf16, d=4096, 16384 tokens",
    "apply >= 80% of the device's memory bandwidth",
    "OFT layer step within 3% of the bare base GEMM step",
)
OFT_DTYPE = {"bf16": "bf16", "fp32": "float", "fp16": "half"}
TIME_SCALE_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}


def log(*parts):
    print("[compare_peft]", *parts, flush=True)


# ------------------------------------------------------------------------------------------------
# The plain-PyTorch OFT layer (same math as PEFT and oft)
# ------------------------------------------------------------------------------------------------
def cayley_neumann(theta, b, k, rows, cols):
    """R_k = (I + Q)(I + Q + ... + Q^k) for each row of theta (r x b(b-1)/2), in theta's dtype."""
    import torch
    r = theta.shape[0]
    q = theta.new_zeros(r, b, b)
    q[:, rows, cols] = theta
    q = q - q.transpose(1, 2)
    eye = torch.eye(b, dtype=theta.dtype, device=theta.device)
    s = eye + q
    p = q
    for _ in range(2, k + 1):
        p = torch.bmm(p, q)
        s = s + p
    return torch.bmm(eye + q, s)


class TorchOFTLinear:
    """Frozen W0 (n_out x d) with a Cayley-Neumann OFT adapter, input-centric, plain PyTorch."""

    def __init__(self, weight, b, k, theta):
        import torch
        self.weight, self.b, self.k = weight, b, k
        self.d = weight.shape[1]
        self.r = self.d // b
        self.theta = theta  # fp32 leaf, requires_grad
        self.rows, self.cols = torch.triu_indices(b, b, 1, device=weight.device)

    def rotation(self):
        return cayley_neumann(self.theta, self.b, self.k, self.rows, self.cols)

    def __call__(self, x):
        import torch
        import torch.nn.functional as F
        rot = self.rotation().to(x.dtype)
        n = x.shape[0]
        y = torch.einsum("nrk,rkc->nrc", x.view(n, self.r, self.b), rot).reshape(n, self.d)
        return F.linear(y, self.weight)


def reference_rotation64(theta, b, k):
    """PEFT's own expansion I + 2Q + 2Q^2 + ... + 2Q^k + Q^(k+1), in float64 (for checks)."""
    import torch
    t = theta.detach().double().cpu()
    rows, cols = torch.triu_indices(b, b, 1)
    q = torch.zeros(t.shape[0], b, b, dtype=torch.float64)
    q[:, rows, cols] = t
    q = q - q.transpose(1, 2)
    eye = torch.eye(b, dtype=torch.float64).expand_as(q)
    out = eye + 2 * q
    power = q
    for _ in range(2, k + 1):
        power = torch.bmm(power, q)
        out = out + 2 * power
    return out + torch.bmm(power, q)


# ------------------------------------------------------------------------------------------------
# PEFT's layer
# ------------------------------------------------------------------------------------------------
def make_peft_layer(base_linear, b, t_terms):
    """PEFT's OFT Linear around `base_linear`, through get_peft_model (PEFT's defaults)."""
    import torch.nn as nn
    from peft import OFTConfig, get_peft_model

    class Wrapped(nn.Module):
        def __init__(self, proj):
            super().__init__()
            self.proj = proj

        def forward(self, x):
            return self.proj(x)

    config = OFTConfig(r=0, oft_block_size=b, use_cayley_neumann=True,
                       num_cayley_neumann_terms=t_terms, target_modules=["proj"],
                       module_dropout=0.0, coft=False, block_share=False, init_weights=True)
    model = get_peft_model(Wrapped(base_linear), config)
    layer = model.get_submodule("base_model.model.proj")
    trainable = [(n, p) for n, p in layer.named_parameters() if p.requires_grad]
    if len(trainable) != 1:
        raise RuntimeError(f"expected one trainable OFT parameter, got {[n for n, _ in trainable]}")
    name, theta = trainable[0]
    return model, layer, name, theta


# ------------------------------------------------------------------------------------------------
# Measurement helpers
# ------------------------------------------------------------------------------------------------
def storage_of(t):
    try:
        s = t.untyped_storage()
        return s.data_ptr(), s.nbytes()
    except AttributeError:  # torch < 2.0
        s = t.storage()
        nbytes = s.nbytes() if hasattr(s, "nbytes") else s.size() * t.element_size()
        return s.data_ptr(), nbytes


def saved_bytes(forward, exclude=()):
    """Bytes of the distinct storages autograd saves during forward(): (total, without `exclude`)."""
    import torch
    seen = {}

    def pack(t):
        ptr, nbytes = storage_of(t)
        seen[ptr] = max(seen.get(ptr, 0), nbytes)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    del out
    skip = {storage_of(t)[0] for t in exclude}
    total = sum(seen.values())
    return total, sum(v for p, v in seen.items() if p not in skip), len(seen)


def rel_err(a, ref):
    a, ref = a.double(), ref.double()
    return ((a - ref).norm() / ref.norm().clamp_min(1e-300)).item()


class GpuTimer:
    def __init__(self, torch):
        self.torch = torch
        self.start = torch.cuda.Event(enable_timing=True)
        self.stop = torch.cuda.Event(enable_timing=True)

    def batch_ms(self, fn, inner):
        self.start.record()
        for _ in range(inner):
            fn()
        self.stop.record()
        self.stop.synchronize()
        return self.start.elapsed_time(self.stop) / inner


class CpuTimer:
    def batch_ms(self, fn, inner):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        return 1e3 * (time.perf_counter() - t0) / inner


def time_interleaved(timer, fns, samples, batch_ms, warmup, sync=lambda: None):
    """Median ms per step of each fn in `fns` (dict), batches interleaved variant by variant."""
    inner = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        sync()
        once = timer.batch_ms(fn, 1)
        inner[name] = max(1, min(200, math.ceil(batch_ms / max(once, 1e-3))))
    times = {name: [] for name in fns}
    for _ in range(samples):
        for name, fn in fns.items():
            times[name].append(timer.batch_ms(fn, inner[name]))
    return {name: {"median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v),
                   "samples": len(v), "inner": inner[name]} for name, v in times.items()}


# ------------------------------------------------------------------------------------------------
# One configuration on the PyTorch sides
# ------------------------------------------------------------------------------------------------
def run_torch_config(torch, device, dtype_name, b, n, d, n_out, k, args, with_peft, timer, sync):
    import torch.nn as nn
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[dtype_name]
    r, m = d // b, b * (b - 1) // 2
    gen = torch.Generator(device="cpu").manual_seed(1000 * b + n)

    def uniform(*shape, scale=1.0, dt=dtype):
        return ((torch.rand(*shape, generator=gen) * 2 - 1) * scale).to(device=device, dtype=dt)

    base = nn.Linear(d, n_out, bias=False).to(device=device, dtype=dtype)
    with torch.no_grad():
        base.weight.copy_(uniform(n_out, d, scale=1.0 / math.sqrt(d)))
    base.weight.requires_grad_(False)
    w0 = base.weight
    theta0 = uniform(r, m, scale=0.4 / math.sqrt(b), dt=torch.float32)  # rho ~ 0.5
    x = uniform(n, d).requires_grad_(True)
    dz = uniform(n, n_out)
    row = {"dtype": dtype_name, "b": b, "N": n, "d": d, "n_out": n_out, "k": k,
           "peft_num_cayley_neumann_terms": k + 2}

    plain = TorchOFTLinear(w0, b, k, theta0.clone().requires_grad_(True))

    def torch_step():
        z = plain(x)
        return torch.autograd.grad(z, (x, plain.theta), dz)

    def bare_step():
        z = base(x)
        return torch.autograd.grad(z, (x,), dz)

    fns = {"torch": torch_step, "bare": bare_step}

    # Checks outside the timed region: the plain-PyTorch R against PEFT's expansion in float64.
    with torch.no_grad():
        r64 = reference_rotation64(plain.theta, b, k)
        row["check_torch_R_vs_float64"] = rel_err(plain.rotation().cpu(), r64)
        eye = torch.eye(b, dtype=torch.float64)
        row["orthogonality_error_R"] = torch.linalg.matrix_norm(
            r64.transpose(1, 2) @ r64 - eye, ord=2).max().item()

    peft_layer = None
    if with_peft:
        try:
            model, peft_layer, pname, ptheta = make_peft_layer(base, b, k + 2)
            with torch.no_grad():
                ptheta.copy_(theta0.to(ptheta.dtype))
            row["peft_adapter_dtype"] = str(ptheta.dtype).replace("torch.", "")
            row["peft_parameter"] = pname
            row["peft_layer_type"] = f"{type(peft_layer).__module__}.{type(peft_layer).__name__}"

            def peft_step():
                z = peft_layer(x)
                return torch.autograd.grad(z, (x, ptheta), dz)

            fns = {"peft": peft_step, **fns}
            # Same function? Z, dX and dtheta of PEFT against the plain-PyTorch layer.
            zp, zt = peft_layer(x), plain(x)
            gp, gt = torch.autograd.grad(zp, (x, ptheta), dz), torch.autograd.grad(zt, (x, plain.theta), dz)
            row["check_peft_vs_torch"] = {"Z": rel_err(zp.detach(), zt.detach()),
                                          "dX": rel_err(gp[0], gt[0]), "dtheta": rel_err(gp[1], gt[1])}
            del zp, zt, gp, gt
        except Exception as e:  # PEFT missing or its API changed: keep the other sides
            row["peft_error"] = f"{type(e).__name__}: {e}"
            log(f"PEFT failed for {dtype_name} b={b} N={n}: {row['peft_error']}")
            peft_layer = None
            fns.pop("peft", None)

    # Bytes kept for backward (one forward under saved_tensors_hooks each).
    mib = lambda v: v / 2**20
    kept = {}
    total, no_params, count = saved_bytes(lambda: plain(x), exclude=(w0, plain.theta))
    kept["torch"] = {"bytes": total, "bytes_without_params": no_params, "tensors": count}
    total, no_params, count = saved_bytes(lambda: base(x), exclude=(w0,))
    kept["bare"] = {"bytes": total, "bytes_without_params": no_params, "tensors": count}
    if peft_layer is not None:
        total, no_params, count = saved_bytes(lambda: peft_layer(x), exclude=(w0, ptheta))
        kept["peft"] = {"bytes": total, "bytes_without_params": no_params, "tensors": count}
    row["kept_for_backward"] = kept

    # Peak extra memory of one step beyond what is allocated before it (GPU only).
    if device.type == "cuda":
        peaks = {}
        for name, fn in fns.items():
            sync()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            out = fn()
            sync()
            peaks[name] = torch.cuda.max_memory_allocated() - before
            del out
        row["peak_step_extra_bytes"] = peaks

    row["times"] = time_interleaved(timer, fns, args.samples, args.batch_ms, args.warmup, sync)
    t = {name: v["median_ms"] for name, v in row["times"].items()}
    row["torch_rotation_ms"] = t["torch"] - t["bare"]
    if "peft" in t:
        row["peft_rotation_ms"] = t["peft"] - t["bare"]
    log(f"{dtype_name} b={b} N={n}: " + ", ".join(f"{k_} {v:.3f} ms" for k_, v in t.items())
        + "; kept MiB " + ", ".join(f"{k_} {mib(v['bytes']):.1f}" for k_, v in kept.items()))
    del plain, peft_layer, base, x, dz, fns
    return row


# ------------------------------------------------------------------------------------------------
# oft side (bench_cuda JSON)
# ------------------------------------------------------------------------------------------------
def find_binary(path):
    candidates = [path] if path else [
        os.path.join(ROOT, p, "bench", "cuda", "bench_cuda")
        for p in ("build-gpu", "build-cuda-bench", "build", "build-release")]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def oft_filter(dtypes, blocks, tokens, k):
    dt = "|".join(OFT_DTYPE[t] for t in dtypes)
    bs = "|".join(str(b) for b in blocks)
    ns = "|".join(str(n) for n in tokens)
    return (f"^cuda_(apply|rotation_step|layer_step)/({dt})/b:({bs})/k:{k}/N:({ns})/"
            f"|^cuda_(base_step|copy)/({dt})/N:({ns})/")


def run_bench_cuda(binary, pattern, repetitions, min_time, out_json, timeout):
    cmd = [binary, f"--benchmark_filter={pattern}", f"--benchmark_repetitions={repetitions}",
           "--benchmark_report_aggregates_only=true", f"--benchmark_min_time={min_time}",
           f"--benchmark_out={out_json}", "--benchmark_out_format=json"]
    log("running:", " ".join(cmd))
    t0 = time.time()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
    log(f"bench_cuda exited {proc.returncode} after {time.time() - t0:.0f} s")
    if proc.returncode != 0 or not os.path.isfile(out_json):
        raise RuntimeError(f"bench_cuda failed ({proc.returncode}):\n{proc.stdout[-4000:]}")
    if "no CUDA device" in proc.stdout:
        raise RuntimeError("bench_cuda found no CUDA device")
    for line in proc.stdout.splitlines():
        if "CHECK FAILED" in line or "ERROR OCCURRED" in line or line.startswith("bench_cuda:"):
            log("bench_cuda:", line.strip())
    return proc.stdout


def load_oft(path):
    """{(kind, oft dtype, b, k, N): entry} from bench_cuda JSON (medians when repeated)."""
    with open(path) as f:
        report = json.load(f)
    entries, errors = {}, []
    for e in report.get("benchmarks", []):
        name = re.sub(r"/manual_time$", "", e.get("run_name", e["name"]))
        parts = name.split("/")
        if len(parts) < 3 or not parts[0].startswith("cuda_"):
            continue
        kv = dict(p.split(":", 1) for p in parts[2:] if ":" in p)
        key = (parts[0][5:], parts[1], int(kv.get("b", 0)), int(kv.get("k", 0)), int(kv["N"]))
        if e.get("error_occurred"):
            errors.append(f"{name}: {e.get('error_message')}")
            continue
        aggregate = e.get("aggregate_name")
        if e.get("run_type") == "aggregate" and aggregate != "median":
            continue
        if key in entries and entries[key]["aggregate"] == "median" and aggregate != "median":
            continue
        skip = {"name", "run_name", "run_type", "repetitions", "repetition_index", "threads",
                "iterations", "real_time", "cpu_time", "time_unit", "family_index",
                "per_family_instance_index", "aggregate_name", "aggregate_unit"}
        entry = {k_: v for k_, v in e.items() if k_ not in skip}
        entry["ms"] = e["real_time"] * TIME_SCALE_MS[e.get("time_unit", "ns")]
        entry["aggregate"] = aggregate or "single"
        entries[key] = entry
    return entries, report.get("context", {}), errors


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------
def fmt(v, spec=".3f", suffix=""):
    return "-" if v is None else format(v, spec) + suffix


def ratio(a, b):
    return a / b if (a is not None and b not in (None, 0)) else None


def combine(rows, oft, k):
    table = []
    for row in rows:
        odt = OFT_DTYPE[row["dtype"]]
        get = lambda kind, b=row["b"], kk=k: oft.get((kind, odt, b, kk, row["N"]))
        layer, rot, apply = get("layer_step"), get("rotation_step"), get("apply")
        base, copy = get("base_step", 0, 0), get("copy", 0, 0)
        t = {name: v["median_ms"] for name, v in row.get("times", {}).items()}
        e = {"dtype": row["dtype"], "b": row["b"], "N": row["N"], "k": k,
             "peft_ms": t.get("peft"), "torch_ms": t.get("torch"), "bare_linear_ms": t.get("bare"),
             "oft_layer_ms": layer and layer["ms"], "oft_base_ms": base and base["ms"],
             "oft_rotation_ms": rot and rot["ms"], "oft_apply_ms": apply and apply["ms"],
             "peft_rotation_ms": row.get("peft_rotation_ms"),
             "torch_rotation_ms": row.get("torch_rotation_ms")}
        e["oft_rotation_by_subtraction_ms"] = (e["oft_layer_ms"] - e["oft_base_ms"]
                                               if layer and base else None)
        e["peft_over_oft"] = ratio(e["peft_ms"], e["oft_layer_ms"])
        e["torch_over_oft"] = ratio(e["torch_ms"], e["oft_layer_ms"])
        e["oft_layer_over_base"] = ratio(e["oft_layer_ms"], e["oft_base_ms"])
        e["peft_layer_over_bare"] = ratio(e["peft_ms"], e["bare_linear_ms"])
        e["peft_rotation_over_oft_rotation"] = ratio(e["peft_rotation_ms"], e["oft_rotation_ms"])
        e["torch_rotation_over_oft_rotation"] = ratio(e["torch_rotation_ms"], e["oft_rotation_ms"])
        e["oft_apply_bw_fraction"] = apply and apply.get("bw_fraction")
        e["oft_apply_GBps"] = apply and apply.get("GBps")
        e["oft_copy_GBps"] = copy and copy.get("GBps")
        e["oft_apply_over_copy_bw"] = ratio(e["oft_apply_GBps"], e["oft_copy_GBps"])
        kept = row.get("kept_for_backward", {})
        e["kept_bytes"] = {"peft": kept.get("peft", {}).get("bytes"),
                           "torch": kept.get("torch", {}).get("bytes"),
                           "bare_linear": kept.get("bare", {}).get("bytes"),
                           "oft": (layer or {}).get("kept_bytes")}
        e["kept_bytes_without_params"] = {
            "peft": kept.get("peft", {}).get("bytes_without_params"),
            "torch": kept.get("torch", {}).get("bytes_without_params"),
            "oft_x_only": (layer or {}).get("kept_x_bytes")}
        e["oft_checks_ok"] = all(v.get("check_ok", 1) == 1 for v in (layer, rot, apply, base) if v)
        table.append(e)
    return table


def print_tables(table, d):
    mib = lambda v: None if v is None else v / 2**20
    print()
    print(f"Layer step (forward + backward: dX, dtheta), median ms per step; d = n_out = {d}")
    h = (f"{'dtype':5s} {'b':>3s} {'N':>6s} | {'PEFT':>8s} {'torch':>8s} {'oft':>8s} | "
         f"{'nn.Linear':>9s} {'oft base':>8s} | {'PEFT/oft':>8s} {'torch/oft':>9s} "
         f"{'oft/base':>8s}")
    print(h)
    print("-" * len(h))
    for e in table:
        print(f"{e['dtype']:5s} {e['b']:3d} {e['N']:6d} | {fmt(e['peft_ms']):>8s} "
              f"{fmt(e['torch_ms']):>8s} {fmt(e['oft_layer_ms']):>8s} | "
              f"{fmt(e['bare_linear_ms']):>9s} {fmt(e['oft_base_ms']):>8s} | "
              f"{fmt(e['peft_over_oft'], '.2f', 'x'):>8s} {fmt(e['torch_over_oft'], '.2f', 'x'):>9s} "
              f"{fmt(e['oft_layer_over_base'], '.3f'):>8s}")
    print()
    print("Rotation only (fwd + bwd), median ms: PEFT and torch = layer step - bare nn.Linear step;"
          " oft = cuda_rotation_step (oft layer - base in brackets)")
    h = (f"{'dtype':5s} {'b':>3s} {'N':>6s} | {'PEFT':>8s} {'torch':>8s} {'oft':>8s} "
         f"{'(oft l-b)':>9s} | {'PEFT/oft':>8s} {'torch/oft':>9s} | {'apply GB/s':>10s} "
         f"{'of peak':>7s} {'of copy':>7s}")
    print(h)
    print("-" * len(h))
    for e in table:
        frac = e["oft_apply_bw_fraction"]
        print(f"{e['dtype']:5s} {e['b']:3d} {e['N']:6d} | {fmt(e['peft_rotation_ms']):>8s} "
              f"{fmt(e['torch_rotation_ms']):>8s} {fmt(e['oft_rotation_ms']):>8s} "
              f"{fmt(e['oft_rotation_by_subtraction_ms']):>9s} | "
              f"{fmt(e['peft_rotation_over_oft_rotation'], '.2f', 'x'):>8s} "
              f"{fmt(e['torch_rotation_over_oft_rotation'], '.2f', 'x'):>9s} | "
              f"{fmt(e['oft_apply_GBps'], '.0f'):>10s} {fmt(frac and 100 * frac, '.1f', '%'):>7s} "
              f"{fmt(e['oft_apply_over_copy_bw'] and 100 * e['oft_apply_over_copy_bw'], '.1f', '%'):>7s}")
    print()
    print("Bytes kept for backward, MiB (PyTorch: saved_tensors_hooks, distinct storages, "
          "incl. W0/theta; oft: X + theta + R)")
    h = f"{'dtype':5s} {'b':>3s} {'N':>6s} | {'PEFT':>8s} {'torch':>8s} {'oft':>8s} | {'PEFT w/o params':>15s} {'torch w/o params':>16s}"
    print(h)
    print("-" * len(h))
    for e in table:
        kb, kn = e["kept_bytes"], e["kept_bytes_without_params"]
        print(f"{e['dtype']:5s} {e['b']:3d} {e['N']:6d} | {fmt(mib(kb['peft']), '.1f'):>8s} "
              f"{fmt(mib(kb['torch']), '.1f'):>8s} {fmt(mib(kb['oft']), '.1f'):>8s} | "
              f"{fmt(mib(kn['peft']), '.1f'):>15s} {fmt(mib(kn['torch']), '.1f'):>16s}")
    if not all(e["oft_checks_ok"] for e in table if e["oft_layer_ms"] is not None):
        print("WARNING: some bench_cuda output checks FAILED (check_ok = 0): see its JSON labels")


def evaluate_targets(table, oft):
    head = next((e for e in table if e["dtype"] == HEADLINE["dtype"] and e["b"] == HEADLINE["b"]
                 and e["N"] == HEADLINE["N"]), None)
    where = f"({HEADLINE['dtype']}, b={HEADLINE['b']}, N={HEADLINE['N']}, k=3)"
    out = []

    def verdict(value, ok):
        return "NOT MEASURED" if value is None else ("MET" if ok else "NOT MET")

    v = head and head["peft_rotation_over_oft_rotation"]
    out.append({"target": TARGETS[0], "value": v, "threshold": 3.0,
                "status": verdict(v, v is not None and v >= 3.0),
                "detail": f"PEFT rotation (layer - nn.Linear) / oft cuda_rotation_step {where}"})
    v = head and head["oft_apply_bw_fraction"]
    fracs = [e["bw_fraction"] for (kind, *_), e in oft.items() if kind == "apply" and "bw_fraction" in e]
    detail = f"oft cuda_apply bytes / time / theoretical peak {where}"
    if fracs:
        detail += f"; over all apply configs {min(fracs):.1%} .. {max(fracs):.1%}"
    out.append({"target": TARGETS[1], "value": v, "threshold": 0.80,
                "status": verdict(v, v is not None and v >= 0.80), "detail": detail})
    v = head and head["oft_layer_over_base"]
    ratios = [e["oft_layer_over_base"] for e in table if e["oft_layer_over_base"] is not None]
    detail = f"oft cuda_layer_step / cuda_base_step {where}"
    if ratios:
        detail += f"; over all configs {min(ratios):.3f} .. {max(ratios):.3f}"
    out.append({"target": TARGETS[2], "value": v, "threshold": 1.03,
                "status": verdict(v, v is not None and v <= 1.03), "detail": detail})
    print()
    print("Targets of the issue")
    for t in out:
        value = "-" if t["value"] is None else (f"{t['value']:.1%}" if t["threshold"] == 0.80
                                                 else f"{t['value']:.3f}")
        print(f"  [{t['status']:12s}] {t['target']}: {value}   ({t['detail']})")
    return out


# ------------------------------------------------------------------------------------------------
def versions(torch):
    info = {"python": platform.python_version(), "platform": platform.platform(),
            "torch": getattr(torch, "__version__", None) if torch else None}
    if torch is not None:
        info["torch_cuda"] = torch.version.cuda
        info["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_compute_capability"] = f"{p.major}.{p.minor}"
            info["gpu_multiprocessors"] = p.multi_processor_count
            info["gpu_memory_bytes"] = p.total_memory
            info["allow_tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    try:
        import peft
        info["peft"] = peft.__version__
    except Exception as e:
        info["peft"] = None
        info["peft_import_error"] = f"{type(e).__name__}: {e}"
    for mod in ("transformers", "numpy"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:
            info[mod] = None
    return info


def parse_list(text, cast=int):
    return [cast(v) for v in text.split(",") if v.strip()]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", help="JSON results file")
    p.add_argument("--binary", help="bench_cuda (default: build-gpu/bench/cuda/bench_cuda, ...)")
    p.add_argument("--oft-json", help="use this bench_cuda JSON instead of running the binary")
    p.add_argument("--blocks", default="16,32,64")
    p.add_argument("--tokens", default="4096,16384")
    p.add_argument("--dtypes", default="bf16,fp32", help="bf16, fp32 (fp16 also possible)")
    p.add_argument("--features", type=int, default=4096, help="d = n_out (bench_cuda: 4096)")
    p.add_argument("--k", type=int, default=3, help="oft's Cayley-Neumann k (PEFT t = k + 2)")
    p.add_argument("--samples", type=int, default=11, help="timed batches per variant")
    p.add_argument("--batch-ms", type=float, default=20.0, help="target length of one batch")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--bench-repetitions", type=int, default=5)
    p.add_argument("--bench-min-time", default="0.1")
    p.add_argument("--bench-timeout", type=int, default=300)
    p.add_argument("--skip-peft", action="store_true")
    p.add_argument("--skip-torch", action="store_true", help="oft only (also skips PEFT)")
    p.add_argument("--skip-oft", action="store_true")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="CPU, d=256, b in {16,32}, N in {64,256}, fp32: PyTorch sides only")
    a = p.parse_args()
    if a.k < 2:
        p.error("k must be >= 2 (PEFT's num_cayley_neumann_terms t = k + 2 >= 4)")

    if a.cpu_smoke:
        a.features, a.blocks, a.tokens, a.dtypes = 256, "16,32", "64,256", "fp32"
        a.samples, a.batch_ms, a.warmup, a.skip_oft = 3, 5.0, 1, True
    blocks, tokens, dtypes = parse_list(a.blocks), parse_list(a.tokens), parse_list(a.dtypes, str)
    d = n_out = a.features

    torch = None
    if not a.skip_torch:
        import torch as _torch
        torch = _torch
    meta = versions(torch)
    meta.update({"argv": sys.argv[1:], "d": d, "n_out": n_out, "k": a.k,
                 "peft_num_cayley_neumann_terms": a.k + 2, "bias": False,
                 "cpu_smoke": a.cpu_smoke,
                 "timing": "CUDA events around `inner` back-to-back steps, median of --samples "
                           "batches, variants interleaved" if not a.cpu_smoke else
                           "time.perf_counter (CPU smoke)",
                 "rotation_only_method": "PEFT/torch: layer step - bare nn.Linear step (same W0, "
                                         "x, dZ; dX only), both medians of the same interleaved "
                                         "loop; oft: cuda_rotation_step measured directly",
                 "kept_bytes_method": "torch/PEFT: saved_tensors_hooks around one forward, sum "
                                      "of untyped_storage().nbytes() of distinct storages; oft: "
                                      "bench_cuda kept_bytes = X + theta + R (+ tensor-core copies)"})
    log("versions:", json.dumps({k_: meta.get(k_) for k_ in
                                ("gpu", "torch", "torch_cuda", "peft", "python")}))

    rows = []
    if torch is not None:
        if a.cpu_smoke:
            device, timer, sync = torch.device("cpu"), CpuTimer(), (lambda: None)
        else:
            if not torch.cuda.is_available():
                raise SystemExit("compare_peft: torch sees no CUDA device (use --cpu-smoke on a CPU)")
            torch.backends.cuda.matmul.allow_tf32 = False
            device, timer, sync = torch.device("cuda"), GpuTimer(torch), torch.cuda.synchronize
        with_peft = not a.skip_peft and meta.get("peft") is not None
        if not a.skip_peft and not with_peft:
            log("PEFT not importable:", meta.get("peft_import_error"))
        for dt in dtypes:
            for n in tokens:
                for b in blocks:
                    rows.append(run_torch_config(torch, device, dt, b, n, d, n_out, a.k, a,
                                                 with_peft, timer, sync))
                    if device.type == "cuda":
                        torch.cuda.empty_cache()

    oft, oft_context, oft_errors, oft_source = {}, {}, [], None
    if not a.skip_oft:
        try:
            if a.oft_json:
                oft_source = a.oft_json
            else:
                binary = find_binary(a.binary)
                if binary is None:
                    raise RuntimeError("bench_cuda binary not found (build it, or pass --binary)")
                if d != 4096:
                    raise RuntimeError("bench_cuda measures d = n_out = 4096 only")
                tmp = tempfile.mkdtemp(prefix="compare_peft_")
                oft_source = os.path.join(tmp, "bench_cuda_compare.json")
                run_bench_cuda(binary, oft_filter(dtypes, blocks, tokens, a.k),
                               a.bench_repetitions, a.bench_min_time, oft_source, a.bench_timeout)
            oft, oft_context, oft_errors = load_oft(oft_source)
            log(f"oft: {len(oft)} results from {oft_source}"
                + (f", {len(oft_errors)} errors" if oft_errors else ""))
            for err in oft_errors:
                log("  bench_cuda error:", err)
        except Exception as e:
            oft_errors.append(f"{type(e).__name__}: {e}")
            log("oft side failed:", oft_errors[-1])
    if oft_context.get("gpu_name") and meta.get("gpu") and oft_context["gpu_name"] != meta["gpu"]:
        log(f"WARNING: bench_cuda ran on {oft_context['gpu_name']}, torch on {meta['gpu']}")

    if not rows:  # oft only: one row per configuration, no PyTorch numbers
        rows = [{"dtype": dt, "b": b, "N": n} for dt in dtypes for n in tokens for b in blocks]
    table = combine(rows, oft, a.k)
    print_tables(table, d)
    targets = evaluate_targets(table, oft)
    print(f"GPU: {meta.get('gpu') or oft_context.get('gpu_name') or '-'}; torch {meta.get('torch')}, "
          f"peft {meta.get('peft')}, bench_cuda context: "
          f"peak {oft_context.get('gpu_peak_memory_bandwidth_GBps', '-')} GB/s, "
          f"CUDA runtime {oft_context.get('cuda_runtime_version', '-')}")
    if a.cpu_smoke:
        print("CPU SMOKE: tiny shapes on the CPU, no PEFT/oft GPU numbers; proves the script runs")

    result = {"meta": meta, "oft_context": oft_context, "oft_source": oft_source,
              "oft_errors": oft_errors, "torch_runs": rows, "table": table, "targets": targets,
              "oft_results": [{"kind": k_[0], "dtype": k_[1], "b": k_[2], "k": k_[3], "N": k_[4], **v}
                              for k_, v in sorted(oft.items())]}
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1, default=str)
        log("wrote", a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
