#!/usr/bin/python3
"""The serving table from one bench_serving JSON run (medians of its repetitions): what the
adapter bank adds to the base layer's GEMM, against issue 29's targets (under 5% for decode
batches of 64 tokens or more, under 3% for prefill), the per-request loop it replaces, and the
fused QKV layer against the 3x batch.

  build/bench/bench_serving --benchmark_repetitions=5 --benchmark_enable_random_interleaving=true \\
      --benchmark_out=bench/results/zen3/serving.json --benchmark_out_format=json
  /usr/bin/python3 bench/summarize_serving.py bench/results/zen3/serving.json

Prints markdown; exits 1 if a benchmark reported an error (a failed correctness check).
"""
import json
import statistics
import sys
from collections import defaultdict

SCALE_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}
DECODE_TARGET, PREFILL_TARGET = 5.0, 3.0


def medians(path):
    """Median real time (ms) per run name, and the run context."""
    with open(path) as f:
        data = json.load(f)
    times, errors = defaultdict(list), []
    for bm in data["benchmarks"]:
        if bm.get("run_type") == "aggregate":
            continue
        name = bm.get("run_name", bm["name"]).replace("/real_time", "")
        if bm.get("error_occurred"):
            errors.append(f"{name}: {bm.get('error_message')}")
            continue
        times[name].append(bm["real_time"] * SCALE_MS[bm["time_unit"]])
    return {k: statistics.median(v) for k, v in times.items()}, data.get("context", {}), errors


def pct(part, whole):
    return 100.0 * part / whole


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    ms, context, errors = medians(sys.argv[1])
    for error in errors:
        print(f"ERROR {error}")
    print(f"CPU: {context.get('host_name', '?')}, {context.get('num_cpus', '?')} CPUs, "
          f"{context.get('oft_isa', '?')}; {context.get('oft_gemm_backend', '?')}; "
          f"d = n_out = 4096, b = 32, float32 rotations; times are medians in ms.\n")

    print("Decode (B tokens from B distinct requests, adapters drawn uniformly from A):\n")
    print("bank: float32 activations and R; bf16 x: bfloat16 activations; bf16 R: R stored as "
          "bfloat16. Overheads are the bank's time over the base GEMM's.\n")
    print("| A | B | base GEMM | bank | overhead | bf16 x | overhead | bf16 R | overhead | "
          "loop per request | bank vs loop | target |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for adapters in (1, 8, 64):
        for tokens in (1, 8, 64, 256):
            args = f"adapters:{adapters}/tokens:{tokens}"
            base = ms[f"BM_BaseGemm/tokens:{tokens}"]
            bank, bf16, stored, loop = (ms[f"{b}/{args}"] for b in (
                "BM_BankDecode", "BM_BankDecodeBf16", "BM_BankDecodeStoredBf16", "BM_LoopDecode"))
            target = ("n/a" if tokens < 64 else
                      ("met" if max(pct(bank, base), pct(bf16, base)) < DECODE_TARGET else "MISSED"))
            print(f"| {adapters} | {tokens} | {base:.3f} | {bank:.4f} | {pct(bank, base):.2f}% | "
                  f"{bf16:.4f} | {pct(bf16, base):.2f}% | {stored:.4f} | {pct(stored, base):.2f}% | "
                  f"{loop:.4f} | {loop / bank:.1f}x | {target} |")

    print("\nPrefill (8 requests x 512 tokens, request k on adapter k mod A):\n")
    print("| A | base GEMM | bank | overhead | loop per request | target |")
    print("| ---: | ---: | ---: | ---: | ---: | --- |")
    base = ms["BM_BaseGemm/tokens:4096"]
    for adapters in (1, 8):
        bank, loop = ms[f"BM_BankPrefill/adapters:{adapters}"], ms[f"BM_LoopPrefill/adapters:{adapters}"]
        target = "met" if pct(bank, base) < PREFILL_TARGET else "MISSED"
        print(f"| {adapters} | {base:.1f} | {bank:.2f} | {pct(bank, base):.2f}% | {loop:.2f} | {target} |")

    print("\nFused QKV (q 4096, k 1024, v 1024 rows; 8 adapters targeting all three):\n")
    print("| tokens | base GEMM | ServingLinear | overhead | 3x batch | 3x batch / ServingLinear |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for tokens in (64, 256, 4096):
        base, serving, three = (ms[f"{b}/tokens:{tokens}"] for b in
                                ("BM_FusedBase", "BM_FusedServing", "BM_FusedThreeBatch"))
        print(f"| {tokens} | {base:.2f} | {serving:.2f} | {pct(serving - base, base):.1f}% | "
              f"{three:.2f} | {three / serving:.2f}x |")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
