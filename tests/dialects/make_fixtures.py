#!/usr/bin/env python3
"""Writes tests/dialects/fixtures/: LyCORIS diag-OFT adapters saved by LyCORIS itself, and what
LyCORIS computes with them, for the C++ parity tests (test_lycoris_parity.cpp).

Uses the real lycoris-lora from PyPI (pinned below; the venv of scripts/peft_venv.sh):

    /work/peft-venv/bin/python tests/dialects/make_fixtures.py [OUT_DIR]

Per case, two files:
  lycoris_<case>.safetensors           LycorisNetwork.save_weights (LyCORIS's own saver):
                                       lycoris_<module>.oft_blocks / .alpha / .rescale
  lycoris_<case>_expected.safetensors  the base layers and LyCORIS's numbers, float32:
      <module>.weight, <module>.bias     the frozen nn.Linear (seeded random)
      <module>.x                         an input batch [N, in]
      <module>.merged.<i>                LoRA module get_merged_weight(multipliers[i]) (what
                                         LycorisNetwork.merge_to writes into the layer)
      <module>.forward.<i>               the wrapped layer's forward(x) at multiplier[i]
  metadata: lycoris and torch versions, the multipliers, the case's settings, and per module
  whether LyCORIS's norm constraint was active (its own test: ||Q||_F + 1e-8 > alpha * out_dim).

The oft_blocks are random and nonzero (LyCORIS initializes them to zero, which would hide a
transposed R or a wrong sign); rescale is random too where it is on. One module per case is
scaled so that its constraint binds and another so that it does not, where the case has one.
Cases "bypass_*" run LyCORIS with bypass_mode=True (it rotates the layer's output, bias
included), the others in LyCORIS's default mode (the merged weight; the bias is not rotated).
"""

import json
import os
import sys

import torch
import torch.nn as nn

LYCORIS_VERSION = "4.1.3"  # pinned: the version these fixtures were made with

MULTIPLIERS = [1.0, 0.5, 0.0, -0.75, 1.5]


class Tiny(nn.Module):
    """Three Linear layers; proj.out checks the dotted-name mapping (lycoris_proj_out)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(12, 16)
        self.fc2 = nn.Linear(16, 24)
        self.proj = nn.Module()
        self.proj.out = nn.Linear(24, 6, bias=False)


# name, linear_dim (LyCORIS picks b from it by its factorization), constraint alpha (0 = off),
# rescaled, bypass_mode, spread of oft_blocks per module (chosen so that, where alpha > 0, one
# module's constraint binds and another's does not).
CASES = [
    ("plain_b4", 4, 0.0, False, False, {"fc1": 0.3, "fc2": 0.25, "proj.out": 0.4}),
    ("constrained_b8", 8, 0.05, False, False, {"fc1": 0.6, "fc2": 0.05, "proj.out": 0.5}),
    ("rescaled_b4", 4, 0.04, True, False, {"fc1": 0.5, "fc2": 0.03, "proj.out": 0.3}),
    ("bypass_b4", 4, 0.0, False, True, {"fc1": 0.3, "fc2": 0.25, "proj.out": 0.4}),
    ("bypass_rescaled_b8", 8, 0.0, True, True, {"fc1": 0.3, "fc2": 0.25, "proj.out": 0.4}),
]

TOKENS = 5


def make_case(out_dir, name, linear_dim, alpha, rescaled, bypass, spread, seed):
    from lycoris import create_lycoris

    torch.manual_seed(seed)
    model = Tiny()
    network = create_lycoris(model, 1.0, linear_dim=linear_dim, linear_alpha=1,
                             algo="diag-oft", constraint=alpha, rescaled=rescaled,
                             bypass_mode=bypass)
    network.apply_to()
    modules = dict(model.named_modules())
    lora_of = {lora.lora_name: lora for lora in network.loras}
    expected, active, failed, first_error = {}, {}, {}, [""]
    with torch.no_grad():
        for path, sigma in spread.items():
            lora = lora_of["lycoris_" + path.replace(".", "_")]
            lora.oft_blocks.normal_(0.0, sigma)
            if rescaled:
                lora.rescale.uniform_(0.5, 1.5)
            q = lora.oft_blocks - lora.oft_blocks.transpose(1, 2)
            active[path] = bool(lora.constraint > 0 and torch.norm(q) + 1e-8 > lora.constraint)
    network.save_weights(os.path.join(out_dir, f"lycoris_{name}.safetensors"), torch.float32,
                         None)
    with torch.no_grad():
        for path in spread:
            layer = modules[path]
            lora = lora_of["lycoris_" + path.replace(".", "_")]
            expected[f"{path}.weight"] = layer.weight.detach().clone()
            if layer.bias is not None:
                expected[f"{path}.bias"] = layer.bias.detach().clone()
            x = torch.randn(TOKENS, layer.in_features)
            expected[f"{path}.x"] = x
            for i, s in enumerate(MULTIPLIERS):
                network.set_multiplier(s)
                merged, _ = lora.get_merged_weight(multiplier=s, shape=layer.weight.shape,
                                                   device=layer.weight.device)
                expected[f"{path}.merged.{i}"] = merged.detach().clone()
                try:
                    expected[f"{path}.forward.{i}"] = layer(x).detach().clone()
                except RuntimeError as error:
                    # lycoris-lora 4.1.3's bypass forward at a multiplier other than 1 views a
                    # non-contiguous einsum result (diag_oft.py, _bypass_forward) and raises:
                    # recorded, so the docs' statement stays checked.
                    failed.setdefault(path, []).append(s)
                    first_error[0] = str(error).split(".")[0]
    # merge_to writes get_merged_weight into the layer: checked here once, so the fixture's
    # "merged" is what a LyCORIS merge leaves in the model.
    network.set_multiplier(1.0)
    network.merge_to(MULTIPLIERS[0])
    for path in spread:
        assert torch.equal(modules[path].weight.detach(), expected[f"{path}.merged.0"]), path
    import importlib.metadata as md
    from safetensors.torch import save_file
    metadata = {
        "lycoris_version": md.version("lycoris-lora"),
        "torch_version": torch.__version__,
        "multipliers": json.dumps(MULTIPLIERS),
        "case": json.dumps({"linear_dim": linear_dim, "constraint": alpha,
                            "rescaled": rescaled, "bypass_mode": bypass}),
        "modules": json.dumps(list(spread)),
        "constraint_active": json.dumps(active),
        "forward_failed": json.dumps({"multipliers": failed, "error": first_error[0]}),
    }
    save_file({k: v.contiguous() for k, v in expected.items()},
              os.path.join(out_dir, f"lycoris_{name}_expected.safetensors"), metadata)
    return active, failed


def main():
    import importlib.metadata as md
    version = md.version("lycoris-lora")
    if version != LYCORIS_VERSION:
        sys.exit(f"make_fixtures.py: lycoris-lora {version} installed, the fixtures pin "
                 f"{LYCORIS_VERSION} (pip install lycoris-lora=={LYCORIS_VERSION})")
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "fixtures")
    os.makedirs(out_dir, exist_ok=True)
    torch.set_num_threads(1)
    for seed, case in enumerate(CASES, start=30):
        active, failed = make_case(out_dir, *case, seed=seed)
        print(f"lycoris_{case[0]}: constraint active {active}; forward failed at {failed}")


if __name__ == "__main__":
    main()
