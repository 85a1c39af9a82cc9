#!/usr/bin/env python3
"""Serving many adapters in one layer from PyTorch: oft.serve's bank against the per-adapter loop
a server without multi-adapter batching runs, and against a batched LoRA reference, on the CPU,
in one interleaved run (forward only, torch.no_grad).

One frozen nn.Linear, d = n_out = 4096 with bias, in float32 (or --dtype bfloat16: bfloat16
weights and activations), and A adapters on it (A in {1, 8, 64}; the same 64 adapters throughout,
a batch only uses the first A). Batches:

  decode B     B tokens from B distinct requests (B in {1, 8, 64, 256}), request i's adapter
               uniform at random among the first A (seeded): x [B, d], one id per token.
  prefill      8 requests x 512 tokens, each request's adapter uniform among the first
               --prefill-adapters (8): x [8, 512, d], one id per request.

Sides (every one runs in every round, in a shuffled order, so all see the same load):

  base                 the nn.Linear alone.
  oft bank             oft.serve.ServingLinear: each token rotated by its adapter's resident R
                       (oft.serve.AdapterBankRotation), then the one base GEMM.
  oft bank rotation    the bank's rotation alone, as oft.serve runs it (the part the bank adds,
                       timed directly): ids checked and converted, the output allocated per call.
  bank apply           the bank's own work: oft._core.AdapterBank.apply with the int32 ids made
                       once and the output buffer allocated once and reused. The difference to
                       the side above is oft.serve's per-call cost: Python id handling (tens of
                       microseconds) and, for large x, a fresh output that the kernel must
                       page-fault in (glibc serves allocations over 32 MiB with a new mmap).
  peft loop            PEFT 0.21's OFT Linear layer holding the 64 adapters (b = 32, PEFT's default
                       Neumann series, T = 5), one forward per adapter present in the batch:
                       set_adapter(name, inference_mode=True), that adapter's tokens (index_select),
                       output scattered back (index_copy_). Grouping by adapter is the generous
                       form of the per-request loop: never more forwards than requests. PEFT
                       recomputes R from its weight on every forward, as it does when it serves.
  oft loop             the same loop through the bank (ServingLinear with one id per forward):
                       what the loop costs without PEFT's per-forward R.
  lora bgmv            base output plus a batched LoRA r = 16 delta in plain PyTorch, the
                       Punica/S-LoRA "bgmv" form: each token's A [d, r] and B [r, n_out] gathered
                       (index_select over the stacked adapters), two torch.bmm, added by
                       torch.baddbmm. For prefill the gather is per request (its 512 tokens share
                       one adapter); per token it would copy 4096 x 512 KiB. LoRA's alpha / r
                       scaling is folded into B. LoRA weights in the model's dtype.
  lora delta           the gathered LoRA delta alone (without the base and the add).
  lora grouped delta   a LoRA delta without the gather ("sgmv" style, as a loop): per adapter
                       present, its tokens times its A and B (index_select, two matmuls,
                       index_add_). Timed alone, to show what the gather costs.

Adapter sizes at d = n_out = 4096, b = 32: a PEFT OFT adapter trains r b (b - 1) / 2 =
128 x 496 = 63,488 parameters; the bank keeps R itself resident, 128 blocks of 32 x 32 =
131,072 float32 values (512 KiB, adapter_bytes()). LoRA r = 16 has 2 x 16 x 4096 = 131,072
parameters (512 KiB in float32, 256 KiB in bfloat16).

Before timing, each side's output is checked (outside the timed loop): the bank against PEFT's
loop (the same adapters: the bank holds PEFT's own R, through oft.serve.peft_rotation_blocks),
the oft loop against the bank, LoRA bgmv against a per-token float64 loop. These are sanity
checks that the timed code computes what it claims (oft's correctness tests are
python/tests/test_serve.py): each difference must be under a tenth of what the adapters change.

Timing: one warm-up call per side and batch (the checks), then --rounds rounds (decode, default 9)
and --prefill-rounds rounds (prefill, default 7; 3 with bfloat16, whose base GEMM takes seconds on
a CPU without bfloat16 instructions); per round, each side's sample is the mean of `reps` calls,
reps chosen once per batch so that the base layer's sample is at least 30 ms; reported: the
median over rounds. Added time = median(side) - median(base); the directly timed parts (bank
rotation, LoRA delta) are reported beside it, as a fraction of the base. torch and oft use
--threads threads (2). OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are removed from the environment
(the script restarts itself without them before torch loads).

Run: python3 bench/compare_serving.py [--dtype float32|bfloat16] [--rounds 9]
         [--prefill-rounds 7] [--out bench/results/zen3/serving_python.json]
Writes the JSON (serving_python_bf16.json for bfloat16) and the printed table beside it (.txt).
"""
import argparse
import copy
import io
import json
import math
import os
import platform
import random
import statistics
import sys
import time
import warnings

from bench_host import restart_without_openblas_presets  # noqa: E402

restart_without_openblas_presets()

import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FEATURES = 4096
BLOCK = 32
LORA_RANK = 16
SIDES = ("base", "oft bank", "oft bank rotation", "bank apply", "peft loop", "oft loop",
         "lora bgmv", "lora delta", "lora grouped delta")
WITH_BASE = ("oft bank", "peft loop", "oft loop", "lora bgmv")  # sides that include the base GEMM


def cpu_description():
    fields = {}
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    flags = fields.get("flags", "").split()
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return (f"{fields.get('model name', platform.processor())} (family {fields.get('cpu family')} "
            f"model {fields.get('model')}), {os.cpu_count()} logical CPUs, {' '.join(isa)}")


class OneLayer(torch.nn.Module):
    def __init__(self, base):
        super().__init__()
        self.proj = base

    def forward(self, x):
        return self.proj(x)


def peft_layer(base, count, seed):
    """PEFT's OFT Linear over `base` with `count` adapters a0, a1, ... (b = 32, PEFT's defaults
    otherwise: Neumann series, T = 5), each with random nonzero weights."""
    from peft import OFTConfig, get_peft_model

    config = OFTConfig(r=0, oft_block_size=BLOCK, target_modules=["proj"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(OneLayer(base), config, adapter_name="a0")
        for k in range(1, count):
            model.add_adapter(f"a{k}", copy.deepcopy(config))
    layer = model.base_model.model.proj
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k in range(count):
            w = layer.oft_R[f"a{k}"].weight
            w.copy_(0.05 * torch.randn(w.shape, generator=g))
            w.requires_grad_(False)
    return layer.eval()


class LoraBank:
    """Stacked LoRA adapters: A [count, d, r], B [count, r, n_out]; delta(x3, ids) with x3
    [G, T, d] and one adapter id per group of T tokens: each group's A and B gathered, two bmm."""

    def __init__(self, count, d, n_out, rank, dtype, seed):
        g = torch.Generator().manual_seed(seed)
        self.a = (torch.randn(count, d, rank, generator=g) / math.sqrt(d)).to(dtype)
        self.b = (0.05 * torch.randn(count, rank, n_out, generator=g)).to(dtype)

    def delta(self, x3, ids):
        return torch.bmm(torch.bmm(x3, self.a.index_select(0, ids)), self.b.index_select(0, ids))

    def forward(self, base, x3, ids):
        y = base(x3)
        return torch.baddbmm(y, torch.bmm(x3, self.a.index_select(0, ids)),
                             self.b.index_select(0, ids))

    def grouped_delta(self, x3, ids):
        out = torch.zeros(x3.shape[:-1] + self.b.shape[-1:], dtype=x3.dtype)
        for k in torch.unique(ids).tolist():
            rows = (ids == k).nonzero().squeeze(1)
            out.index_add_(0, rows, x3.index_select(0, rows) @ self.a[k] @ self.b[k])
        return out

    def reference(self, base, x3, ids):
        """Token by token in float64."""
        y = base(x3).double()
        for i, k in enumerate(ids.tolist()):
            y[i] += x3[i].double() @ self.a[k].double() @ self.b[k].double()
        return y


def grouped_loop(x, ids, run_group):
    """One forward per adapter present: its rows of x (first dimension) through run_group(k,
    rows), scattered back into the output."""
    out = None
    for k in torch.unique(ids).tolist():
        rows = (ids == k).nonzero().squeeze(1)
        y = run_group(k, x.index_select(0, rows))
        if out is None:
            out = torch.empty(x.shape[:-1] + y.shape[-1:], dtype=y.dtype)
        out.index_copy_(0, rows, y)
    return out


def relative(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max()).item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--batches", default="1,8,64,256", help="decode batch sizes B")
    ap.add_argument("--adapters", default="1,8,64", help="adapter counts A for decode")
    ap.add_argument("--prefill", default="8x512", help="requests x tokens ('' to skip)")
    ap.add_argument("--prefill-adapters", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--prefill-rounds", type=int, default=None,
                    help="default 7 (float32) or 3 (bfloat16)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--storage", choices=("float32", "bfloat16"), default="float32",
                    help="how the bank keeps R (bfloat16: rounded once, half the bytes)")
    ap.add_argument("--bf16-arithmetic", choices=("float", "dot_product"), default="float",
                    help="how the bank computes bfloat16 activations (dot_product: vdpbf16ps)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON file (default bench/results/zen3/"
                    "serving_python.json, serving_python_bf16.json for bfloat16); the table is "
                    "written beside it as .txt")
    args = ap.parse_args()
    if args.prefill_rounds is None:
        args.prefill_rounds = 7 if args.dtype == "float32" else 3
    if args.out is None:
        suffix = "" if args.dtype == "float32" else "_bf16"
        suffix += "" if args.storage == "float32" else "_storage_bf16"
        suffix += "" if args.bf16_arithmetic == "float" else "_dot"
        args.out = os.path.join(ROOT, f"bench/results/zen3/serving_python{suffix}.json")
    dtype = getattr(torch, args.dtype)
    batches = [int(v) for v in args.batches.split(",") if v]
    adapter_counts = [int(v) for v in args.adapters.split(",") if v]
    started = time.perf_counter()

    import peft

    import oft
    import oft.serve

    torch.set_num_threads(args.threads)
    oft._core.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    d = n_out = FEATURES
    count = max(adapter_counts + [args.prefill_adapters])

    torch.manual_seed(args.seed)
    base = torch.nn.Linear(d, n_out, bias=True).to(dtype)
    for p in base.parameters():
        p.requires_grad_(False)
    layer = peft_layer(base, count, args.seed + 1)
    serving = oft.serve.ServingLinear(base, capacity=count,
                                      storage=getattr(torch, args.storage),
                                      bf16_arithmetic=args.bf16_arithmetic)
    for k in range(count):
        blocks, shared = oft.serve.peft_rotation_blocks(layer.oft_R[f"a{k}"])
        assert serving.rotation.add(blocks, shared=shared) == k
    lora = LoraBank(count, d, n_out, LORA_RANK, dtype, args.seed + 2)
    sizes = {
        "oft_trained_parameters_per_adapter": (d // BLOCK) * BLOCK * (BLOCK - 1) // 2,
        "oft_bank_bytes_per_adapter": serving.rotation.adapter_bytes(0),
        # R's entries (b^2 per block), whatever the bank keeps them in.
        "oft_bank_values_per_adapter": (d // BLOCK) * BLOCK * BLOCK,
        "lora_r16_parameters_per_adapter": LORA_RANK * (d + n_out),
        "lora_r16_bytes_per_adapter": LORA_RANK * (d + n_out) * lora.a.element_size(),
    }

    def peft_group(k, xg):
        layer.set_adapter(f"a{k}", inference_mode=True)
        return layer(xg)

    # Each workload: x, the ids the bank takes, and the ids of the groups LoRA gathers over.
    workloads = []
    g = torch.Generator().manual_seed(args.seed + 3)
    for n in batches:
        for a in adapter_counts:
            ids = torch.randint(0, a, (n,), generator=g)
            x = torch.randn(n, d, generator=g).to(dtype)
            workloads.append(dict(name=f"decode B={n} A={a}", phase="decode", tokens=n,
                                  adapters=a, distinct=len(torch.unique(ids)), x=x, ids=ids,
                                  x3=x.view(n, 1, d)))
    if args.prefill:
        requests, length = (int(v) for v in args.prefill.split("x"))
        a = args.prefill_adapters
        ids = torch.randint(0, a, (requests,), generator=g)
        x = torch.randn(requests, length, d, generator=g).to(dtype)
        workloads.append(dict(name=f"prefill {requests}x{length} A={a}", phase="prefill",
                              tokens=requests * length, adapters=a,
                              distinct=len(torch.unique(ids)), x=x, ids=ids, x3=x))

    for w in workloads:
        x, ids, x3 = w["x"], w["ids"], w["x3"]
        rows = x.reshape(-1, d)
        per_token = ids.repeat_interleave(rows.shape[0] // ids.shape[0]).to(torch.int32)
        reused = w["reused"] = torch.empty_like(rows)
        w["sides"] = {
            "base": lambda x=x: base(x),
            "oft bank": lambda x=x, ids=ids: serving(x, ids),
            "oft bank rotation": lambda x=x, ids=ids: serving.rotation(x, ids),
            "bank apply": lambda r=rows, y=reused, t=per_token: serving.rotation.bank.apply(
                r, y, t, "auto"),
            "peft loop": lambda x=x, ids=ids: grouped_loop(x, ids, peft_group),
            "oft loop": lambda x=x, ids=ids: grouped_loop(x, ids, lambda k, xg: serving(xg, k)),
            "lora bgmv": lambda x3=x3, ids=ids: lora.forward(base, x3, ids),
            "lora delta": lambda x3=x3, ids=ids: lora.delta(x3, ids),
            "lora grouped delta": lambda x3=x3, ids=ids: lora.grouped_delta(x3, ids),
        }

    # Checks (also each side's warm-up call); the base's time sets the batch's reps.
    checks = {}
    failed = []
    for w in workloads:
        sides = w["sides"]
        t0 = time.perf_counter()
        y_base = sides["base"]()
        w["reps"] = max(1, math.ceil(0.030 / (time.perf_counter() - t0)))
        y_bank = sides["oft bank"]()
        w["routing"] = serving.rotation.last_routing
        y_peft = sides["peft loop"]()
        y_loop = sides["oft loop"]()
        y_rot = sides["oft bank rotation"]()
        sides["bank apply"]()
        assert torch.equal(w["reused"], y_rot.reshape(-1, d))  # the same work, the same bits
        y_delta = sides["lora delta"]()
        y_grouped = sides["lora grouped delta"]()
        y_lora = sides["lora bgmv"]().view(y_base.shape)
        if w["phase"] == "decode" and w["tokens"] <= 64:
            exact = lora.reference(base, w["x3"], w["ids"]).view(y_base.shape)
            lora_error = relative(y_lora, exact)
        else:  # the float64 loop would take a while: the same products, summed in another order
            lora_error = None
        c = {"oft_effect": relative(y_base, y_peft), "oft_bank_vs_peft": relative(y_bank, y_peft),
             "oft_loop_vs_bank": relative(y_loop, y_bank),
             "lora_effect": relative(y_base, y_lora), "lora_vs_float64": lora_error,
             "lora_grouped_vs_gathered": relative(y_grouped, y_delta)}
        checks[w["name"]] = c
        line = ", ".join(f"{k} {v:.1e}" for k, v in c.items() if v is not None)
        print(f"[check] {w['name']} (routing {w['routing']}, reps {w['reps']}): {line}",
              flush=True)
        for key, effect in (("oft_bank_vs_peft", "oft_effect"), ("oft_loop_vs_bank", "oft_effect"),
                            ("lora_vs_float64", "lora_effect"),
                            ("lora_grouped_vs_gathered", "lora_effect")):
            if c[key] is not None and not c[key] < 0.1 * c[effect]:
                failed.append(f"{w['name']}: {key} {c[key]:.2e} is not under a tenth of "
                              f"{effect} {c[effect]:.2e}")
    if failed:
        sys.exit("compare_serving.py: a side does not compute what it claims:\n  "
                 + "\n  ".join(failed))

    order = random.Random(args.seed)
    for phase, rounds in (("decode", args.rounds), ("prefill", args.prefill_rounds)):
        phase_workloads = [w for w in workloads if w["phase"] == phase]
        for w in phase_workloads:
            w["times"] = {s: [] for s in SIDES}
        for round_ in range(rounds):
            for w in phase_workloads:
                names = list(SIDES)
                order.shuffle(names)
                for s in names:
                    f, reps = w["sides"][s], w["reps"]
                    t0 = time.perf_counter()
                    for _ in range(reps):
                        f()
                    w["times"][s].append((time.perf_counter() - t0) / reps * 1e3)
            if phase_workloads:
                elapsed = time.perf_counter() - started
                print(f"[{phase} round {round_ + 1}/{rounds}] {elapsed:.0f} s", flush=True)

    rows = []
    for w in workloads:
        median = {s: statistics.median(t) for s, t in w["times"].items()}
        base_ms = median["base"]
        row = {"batch": w["name"], "phase": w["phase"], "tokens": w["tokens"],
               "adapters": w["adapters"], "distinct_adapters_in_batch": w["distinct"],
               "routing": w["routing"], "reps": w["reps"],
               "median_ms": median, "times_ms": w["times"]}
        row["added_over_base"] = {s: (median[s] - base_ms) / base_ms for s in WITH_BASE}
        row["base_spread"] = (max(w["times"]["base"]) - min(w["times"]["base"])) / 2 / base_ms
        row["part_over_base"] = {"oft bank rotation": median["oft bank rotation"] / base_ms,
                                 "bank apply": median["bank apply"] / base_ms,
                                 "lora delta": median["lora delta"] / base_ms,
                                 "lora grouped delta": median["lora grouped delta"] / base_ms}
        target = 0.03 if w["phase"] == "prefill" else (0.05 if w["tokens"] >= 64 else None)
        if target is not None:
            row["target"] = target
            row["bank_meets_target"] = {
                "oft.serve rotation": row["part_over_base"]["oft bank rotation"] < target,
                "bank apply": row["part_over_base"]["bank apply"] < target,
                "oft bank - base": row["added_over_base"]["oft bank"] < target}
        rows.append(row)

    elapsed = time.perf_counter() - started
    table = io.StringIO()

    def out(line=""):
        print(line)
        table.write(line + "\n")

    out(f"{cpu_description()}; {args.threads} threads; torch {torch.__version__}, "
        f"peft {peft.__version__}, oft.serve")
    out(f"one Linear d = n_out = {d}, {args.dtype}, forward; OFT b = {BLOCK} (PEFT trains "
        f"{sizes['oft_trained_parameters_per_adapter']:,} parameters per adapter, the bank keeps "
        f"{sizes['oft_bank_values_per_adapter']:,} {args.storage} values of R resident, "
        f"{sizes['oft_bank_bytes_per_adapter']:,} bytes in all; bfloat16 "
        f"activations in {args.bf16_arithmetic} arithmetic), LoRA r = "
        f"{LORA_RANK} ({sizes['lora_r16_parameters_per_adapter']:,} parameters per adapter)")
    out(f"medians of {args.rounds} (decode) / {args.prefill_rounds} (prefill) interleaved rounds; "
        "all figures relative to the base's median time:")
    out("  '+x%' (oft bank, loops, lora bgmv): the side's median minus the base's; "
        "'base +-': half the base's range over the rounds")
    out("  rotation / apply / lora delta / grouped: that part timed alone (oft.serve's rotation; "
        "the bank's apply into a reused buffer; LoRA's gathered and grouped deltas)")
    out()
    out(f"{'batch':<22}{'base ms':>8}{'base +-':>8}{'oft bank':>9}{'rotation':>9}{'apply':>7}"
        f"{'peft loop':>10}{'oft loop':>9}{'lora bgmv':>10}{'delta':>7}{'grouped':>8}  routing")
    for row in rows:
        added, part = row["added_over_base"], row["part_over_base"]
        out(f"{row['batch']:<22}{row['median_ms']['base']:>8.1f}{row['base_spread']:>8.0%}"
            f"{added['oft bank']:>+9.1%}{part['oft bank rotation']:>9.1%}"
            f"{part['bank apply']:>7.1%}{added['peft loop']:>+10.0%}{added['oft loop']:>+9.0%}"
            f"{added['lora bgmv']:>+10.0%}{part['lora delta']:>7.0%}"
            f"{part['lora grouped delta']:>8.1%}  {row['routing']}")
    out()
    for row in rows:
        if "target" in row:
            verdict = ", ".join(f"{k} {'met' if v else 'NOT met'}"
                                for k, v in row["bank_meets_target"].items())
            out(f"target < {row['target']:.0%}, {row['batch']}: {verdict}")
    out(f"run took {elapsed:.0f} s")

    result = {
        "what": "one Linear layer serving A adapters in one batch, forward only: oft.serve's "
                "bank vs PEFT's per-adapter loop vs a gathered (bgmv) LoRA r=16 in PyTorch",
        "command": "python3 bench/compare_serving.py " + " ".join(sys.argv[1:]),
        "cpu": cpu_description(), "threads": args.threads, "dtype": args.dtype,
        "storage": args.storage, "bf16_arithmetic": args.bf16_arithmetic,
        "features": d, "n_out": n_out, "block_size": BLOCK, "lora_rank": LORA_RANK,
        "rounds": {"decode": args.rounds, "prefill": args.prefill_rounds},
        "torch": torch.__version__, "peft": peft.__version__,
        "python": platform.python_version(), "seconds": elapsed, "sizes": sizes,
        "notes": ["the same 64 adapters throughout (oft bank, PEFT layer, LoRA stack); a batch "
                  "with A adapters draws each request's adapter among the first A",
                  "peft loop / oft loop: one forward per adapter present in the batch (grouped), "
                  "the generous form of a per-request loop",
                  "lora bgmv: A and B gathered per token (decode) or per request (prefill) with "
                  "index_select, two torch.bmm, baddbmm onto the base output",
                  "added_over_base: (median(side) - median(base)) / median(base); "
                  "part_over_base: the bank's rotation (oft.serve, or the bank's apply into a "
                  "reused buffer) or LoRA's delta timed alone, over median(base); base_spread: "
                  "(max - min) / 2 / median of the base's samples"],
        "checks": checks, "rows": rows,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    with open(os.path.splitext(args.out)[0] + ".txt", "w") as f:
        f.write(table.getvalue())
    print(f"wrote {os.path.relpath(args.out, ROOT)} and its .txt")


if __name__ == "__main__":
    main()
