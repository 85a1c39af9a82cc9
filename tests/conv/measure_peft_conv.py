#!/usr/bin/env python3
"""Measures when PEFT's Conv2d OFT is self-consistent: its unmerged forward (the layer's forward
with the adapter active) against the forward of the weight its own merge() writes, on random
adapters, for a few kernel shapes, paddings, strides and input sizes. Uses the real PEFT (pinned
below; the venv of scripts/peft_venv.sh):

    /work/peft-venv/bin/python tests/conv/measure_peft_conv.py [--json OUT] [--fixtures DIR]

Prints one row per configuration (or the exception PEFT raises); docs/dialects.md section 7
records the result. Nothing here is run by ctest: the facts it measures are PEFT's, and
include/oft/io/peft_conv.hpp encodes them. With --fixtures it also writes DIR/peft_conv/ (a PEFT
adapter over a 3x3 and a 1x1 Conv2d, saved by PEFT) and DIR/peft_conv_expected.safetensors (the
base kernels and what PEFT's merge writes for each), which tests/conv/test_peft_conv.cpp reads.
"""

import argparse
import json
import os
import sys

import torch
import torch.nn as nn

PEFT_VERSION = "0.21.2"


class One(nn.Module):
    def __init__(self, cin, cout, kernel, stride, padding):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding)

    def forward(self, x):
        return self.conv(x)


# cin, cout, kernel, stride, padding, input H x W, oft_block_size
CONFIGS = [
    (8, 6, (1, 1), 1, 0, (7, 9), 4),
    (8, 6, (1, 1), 2, 1, (7, 9), 4),
    (4, 6, (3, 3), 1, 0, (3, 3), 4),
    (4, 6, (3, 3), 1, 1, (3, 3), 4),
    (4, 6, (3, 3), 1, 0, (4, 4), 4),
    (4, 6, (3, 3), 1, 0, (8, 8), 4),
    (4, 6, (3, 3), 2, 1, (8, 8), 4),
    (2, 6, (5, 5), 1, 2, (16, 16), 5),
    (4, 6, (3, 1), 1, 0, (8, 8), 4),
    (4, 6, (1, 3), 1, 0, (8, 8), 4),
    (4, 6, (3, 5), 1, 0, (3, 5), 4),
]


def measure(cin, cout, kernel, stride, padding, hw, b, neumann):
    from peft import OFTConfig, get_peft_model

    torch.manual_seed(0)
    model = One(cin, cout, kernel, stride, padding).double()
    config = OFTConfig(target_modules=["conv"], oft_block_size=b, r=0, init_weights=False,
                       use_cayley_neumann=neumann)
    row = {"cin": cin, "cout": cout, "kernel": list(kernel), "stride": stride,
           "padding": padding, "input": list(hw), "b": b, "use_cayley_neumann": neumann}
    try:
        pm = get_peft_model(model, config).double()
        with torch.no_grad():
            for name, p in pm.named_parameters():
                if "oft_R" in name:
                    p.copy_(0.2 * torch.randn_like(p))
        x = torch.randn(2, cin, *hw, dtype=torch.float64)
        with torch.no_grad():
            unmerged = pm(x)
            merged_model = pm.merge_and_unload()
            merged = merged_model(x)
        diff = (unmerged - merged).abs().max().item()
        scale = merged.abs().max().item()
        row.update({"max_abs_diff": diff, "max_abs_output": scale,
                    "self_consistent": diff <= 1e-12 * max(scale, 1.0)})
    except Exception as e:  # PEFT's own refusal or crash: recorded, not hidden
        row.update({"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"})
    return row


class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv3 = nn.Conv2d(4, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 6, 1, stride=2, padding=1)

    def forward(self, x):
        return self.conv1(self.conv3(x))


def write_fixtures(out_dir):
    from peft import OFTConfig, get_peft_model
    from safetensors.torch import save_file

    torch.manual_seed(1)
    model = Two()
    base = {f"{n}.weight": getattr(model, n).weight.detach().clone() for n in ("conv3", "conv1")}
    config = OFTConfig(target_modules=["conv3", "conv1"], oft_block_size=4, r=0,
                       init_weights=False)
    pm = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "oft_R" in name:
                p.copy_(0.2 * torch.randn_like(p))
    pm.save_pretrained(os.path.join(out_dir, "peft_conv"))
    os.remove(os.path.join(out_dir, "peft_conv", "README.md"))  # PEFT's model card template
    x = torch.randn(1, 8, 5, 7)
    with torch.no_grad():
        conv1 = pm.base_model.model.conv1
        unmerged = conv1(x)
        merged_model = pm.merge_and_unload()
    expected = {k: v.contiguous() for k, v in base.items()}
    for n in ("conv3", "conv1"):
        expected[f"{n}.merged"] = getattr(merged_model, n).weight.detach().contiguous()
    expected["conv1.bias"] = model.conv1.bias.detach().clone()
    expected["conv1.x"] = x
    expected["conv1.unmerged"] = unmerged.contiguous()
    save_file(expected, os.path.join(out_dir, "peft_conv_expected.safetensors"),
              metadata={"peft": PEFT_VERSION, "torch": torch.__version__})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    parser.add_argument("--fixtures")
    args = parser.parse_args()
    import peft
    if peft.__version__ != PEFT_VERSION:
        sys.exit(f"this script measures peft {PEFT_VERSION}, found {peft.__version__}")
    rows = []
    for c in CONFIGS:
        for neumann in (True, False):
            r = measure(*c, neumann)
            rows.append(r)
            desc = (f"C={r['cin']} k={tuple(r['kernel'])} s={r['stride']} p={r['padding']} "
                    f"in={tuple(r['input'])} b={r['b']} neumann={neumann}")
            if "error" in r:
                print(f"{desc}: {r['error']}")
            else:
                print(f"{desc}: max|unmerged - merged| = {r['max_abs_diff']:.3g} "
                      f"(outputs up to {r['max_abs_output']:.3g})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"peft": PEFT_VERSION, "torch": torch.__version__, "rows": rows}, f,
                      indent=1)
    if args.fixtures:
        write_fixtures(args.fixtures)


if __name__ == "__main__":
    main()
