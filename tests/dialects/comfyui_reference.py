#!/usr/bin/env python3
"""A test-only reference of ComfyUI's built-in OFT/BOFT loader math, and the error each of its
defects causes on the committed LyCORIS/kohya fixtures (tests/dialects/fixtures), for the table
in docs/dialects.md section 6.

ComfyUI is not on PyPI; its math was read (not copied) from github comfyanonymous/ComfyUI:
  comfy/weight_adapter/oft.py   @ 3684cff31bb470fc106b2c843224e69780266cca (OFTAdapter)
  comfy/weight_adapter/boft.py  @ 204e96f2d3f6507fe3b5fa2afeced58f59ea30d6 (BOFTAdapter)
  comfy/lora.py                 @ 41444b5236c613ee5ff7d09aa620f94b702f30eb (load_lora: alpha is
                                  the stored `.alpha`; model_lora_keys_unet maps `lora_unet_`,
                                  `lycoris_` and diffusers names, never `oft_unet_`)
What its calculate_weight computes, in float32, for a module with oft_blocks B, alpha, optional
rescale, at strength s (writing Q = B - B^T, n = ||Q||_F + 1e-8 over all blocks):

  diag-OFT:  if alpha > 0 and n > alpha: Q <- Q alpha / n        (the RAW alpha: LyCORIS's radius
                                                                 is alpha * out_dim)
             R = (I + Q)(I - Q)^-1
             D = (s R - s I)^T W per output block                 = s (R^T - I) W
             W' = W + s D                                         = W + s^2 (R^T - I) W
             rescale: loaded, never applied
  BOFT:      the same raw-alpha constraint; each stage's R blended s R + (1 - s) I (when s != 1),
             the butterfly stages as LyCORIS's, rescale applied, then W' = W + s (T W - W)

LyCORIS (the fixtures' owner) computes W' = diag(rescale) (s R + (1 - s) I)^T W (diag-OFT) and
diag(rescale) T W (BOFT) with the radius alpha * out; kohya's files carry the same tensors under
`oft_unet_*` names with kohya's rule (docs/dialects.md section 2).

Run with the scripts' venv (torch, safetensors):

    /work/peft-venv/bin/python tests/dialects/comfyui_reference.py [--json OUT]

Per fixture, module and strength it computes the merged weight (a) exactly as the fixture's owner
does (checked against the fixture's stored merge: the row "reference"), (b) with ComfyUI's whole
formula, and (c) with one defect at a time; and records max |W'_x - W'_exact| and
||W'_x - W'_exact||_F / ||W'_exact||_F, W'_exact the fixture's stored merge.
"""

import argparse
import json
import os

import torch
from safetensors import safe_open

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")

DIAG = ["lycoris_plain_b4", "lycoris_rescaled_b4", "lycoris_constrained_b8", "lycoris_conv_b4",
        "kohya_k4", "kohya_alpha0"]
BOFT = ["lycoris_boft_plain_b4", "lycoris_boft_rescaled_b4", "lycoris_boft_constrained_b8",
        "lycoris_boft_conv_b4"]


def load(path):
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}


def constrain(q, alpha, out, raw_alpha, rule):
    """Q after the norm constraint: LyCORIS's rule (c = alpha * out, or ComfyUI's c = alpha),
    or kohya's (Q (min(n, c) + 1e-8) / (n + 1e-8), always)."""
    c = float(alpha) if raw_alpha else float(alpha) * out
    if rule == "kohya" and not raw_alpha:
        n = torch.norm(q)
        return q * ((torch.clamp(n, max=c) + 1e-8) / (n + 1e-8))
    if c > 0:
        n = torch.norm(q) + 1e-8
        if n > c:
            return q * c / n
    return q


def cayley(q):
    eye = torch.eye(q.shape[-1], dtype=q.dtype)
    return (eye + q) @ torch.linalg.inv(eye - q)


def boft_merge(w, blocks, alpha, rescale, s, raw_alpha=False, double_strength=False):
    m, _, b, _ = blocks.shape
    out = w.shape[0]
    q = constrain(blocks - blocks.transpose(-1, -2), alpha, out, raw_alpha, "lycoris")
    r = cayley(q)
    eye = torch.eye(b, dtype=w.dtype)
    x = w
    for i in range(m):
        stage = r[i] * s + (1 - s) * eye
        k = 2**i * (b // 2)
        # gather: channel g k + j of each group of 2k goes to position 2 j + g
        x = x.unflatten(0, (-1, 2, k)).transpose(1, 2).flatten(0, 2).unflatten(0, (-1, b))
        x = torch.einsum("bij,bj...->bi...", stage, x)
        x = x.flatten(0, 1).unflatten(0, (-1, k, 2)).transpose(1, 2).flatten(0, 2)
    if rescale is not None:
        x = rescale.reshape(-1, *([1] * (w.dim() - 1))) * x
    return w + s * (x - w) if double_strength else x


def errors(x, exact):
    d = (x.double() - exact.double())
    return {"max_abs": d.abs().max().item(),
            "rel_fro": (d.norm() / exact.double().norm()).item()}


def modules(expected, adapter, prefix):
    """(module path, adapter name, weight key) for every module of a fixture."""
    out = []
    for key in sorted(expected):
        for suffix in (".weight", ".weight_rows"):
            if key.endswith(suffix):
                path = key[: -len(suffix)]
                name = prefix + path.replace(".", "_")
                if name + ".oft_blocks" in adapter:
                    out.append((path, name, key, suffix == ".weight_rows"))
    return out


def run():
    rows = []
    for case in DIAG + BOFT + ["lycoris_minilm"]:
        adapter, _ = load(os.path.join(FIXTURES, case + ".safetensors"))
        expected, meta = load(os.path.join(FIXTURES, case + "_expected.safetensors"))
        strengths = json.loads(meta["multipliers"])
        kohya = case.startswith("kohya")
        prefix = "oft_unet_" if kohya else "lycoris_"
        for path, name, wkey, partial in modules(expected, adapter, prefix):
            w = expected[wkey].float()
            blocks = adapter[name + ".oft_blocks"].float()
            alpha = adapter[name + ".alpha"].item()
            rescale = adapter.get(name + ".rescale")
            # The layer's output count, for the radius alpha * out (MiniLM's fixture keeps only
            # the first rows of W, so it is not w.shape[0]).
            out = blocks.shape[-3] * blocks.shape[-1] if blocks.dim() == 4 else \
                blocks.shape[0] * blocks.shape[1]
            for i, s in enumerate(strengths):
                merged_key = f"{path}.merged_rows.{i}" if partial else f"{path}.merged.{i}"
                if merged_key not in expected:
                    continue
                exact = expected[merged_key]
                if blocks.dim() == 4:
                    variants = {
                        "reference": boft_merge(w, blocks, alpha, rescale, s),
                        "comfyui": boft_merge(w, blocks, alpha, rescale, s, True, True),
                        "raw_alpha": boft_merge(w, blocks, alpha, rescale, s, raw_alpha=True),
                        "double_strength": boft_merge(w, blocks, alpha, rescale, s,
                                                      double_strength=True),
                    }
                else:
                    rule = "kohya" if kohya else "lycoris"

                    def dm(**kw):
                        return diag_merge(w, blocks, alpha, rescale, s, rule, out, **kw)

                    variants = {
                        "reference": dm(),
                        "comfyui": dm(raw_alpha=True, double_strength=True, drop_rescale=True),
                        "raw_alpha": dm(raw_alpha=True),
                        "double_strength": dm(double_strength=True),
                    }
                    if rescale is not None:
                        variants["rescale_dropped"] = dm(drop_rescale=True)
                if kohya:
                    # comfy/lora.py maps no `oft_unet_` name: the module is skipped with a
                    # "lora key not loaded" warning and the weight stays the base.
                    variants["keys_unmapped"] = w
                    variants["comfyui"] = w
                for defect, x in variants.items():
                    rows.append({"fixture": case, "module": path, "strength": s,
                                 "variant": defect, **errors(x, exact)})
    return rows


def diag_merge(w, blocks, alpha, rescale, s, rule, out, raw_alpha=False,
               double_strength=False, drop_rescale=False):
    """LyCORIS's diag-OFT merge, each ComfyUI defect on request. `out` is the layer's whole
    output count (the radius alpha * out); MiniLM's fixture stores only the first rows of W."""
    b = blocks.shape[1]
    q = constrain(blocks - blocks.transpose(1, 2), alpha, out, raw_alpha, rule)
    r = cayley(q)
    eye = torch.eye(b, dtype=w.dtype)
    rows = w.shape[0]
    wb = w.reshape(rows // b, b, -1)
    diff = torch.einsum("knm,kn...->km...", s * r[: rows // b] - s * eye, wb).reshape(w.shape)
    merged = w + (s * diff if double_strength else diff)
    if rescale is not None and not drop_rescale:
        merged = rescale.reshape(-1, *([1] * (w.dim() - 1)))[:rows].float() * merged
    return merged


def summarize(rows):
    """Worst (max over modules) error per fixture, variant and strength."""
    table = {}
    for r in rows:
        key = (r["fixture"], r["variant"], r["strength"])
        t = table.setdefault(key, {"max_abs": 0.0, "rel_fro": 0.0})
        t["max_abs"] = max(t["max_abs"], r["max_abs"])
        t["rel_fro"] = max(t["rel_fro"], r["rel_fro"])
    return [{"fixture": f, "variant": v, "strength": s, **t}
            for (f, v, s), t in sorted(table.items())]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", help="write the per-fixture summary here")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    summary = summarize(run())
    for r in summary:
        print(f"{r['fixture']:30s} {r['variant']:16s} s={r['strength']:5.2f} "
              f"max_abs={r['max_abs']:.3e} rel_fro={r['rel_fro']:.3e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__,
                       "comfyui": {"oft.py": "3684cff31bb470fc106b2c843224e69780266cca",
                                   "boft.py": "204e96f2d3f6507fe3b5fa2afeced58f59ea30d6",
                                   "lora.py": "41444b5236c613ee5ff7d09aa620f94b702f30eb"},
                       "rows": summary}, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
