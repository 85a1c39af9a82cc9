#!/usr/bin/env python3
"""Writes tests/diffusion/fixtures/lycoris_unet/: a real diffusers UNet2DConditionModel (tiny,
seeded), LyCORIS adapters trained on it and saved by LyCORIS itself, and LyCORIS's own merge of
each file into that UNet, for test_lycoris_unet.cpp (oft::io::merge_diffusion must give the same
tensors). What the tests/dialects fixtures lack and this adds: LyCORIS's module naming over a
whole diffusers U-Net (every Linear and Conv2d, 83 modules), 3x3 ResNet and
up/downsampler convolutions, 1x1 conv_shortcut and proj_in / proj_out (use_linear_projection
False), Linear attention, feed-forward and time-embedding layers, and the merge as a user runs it:
create_lycoris_from_weights on the saved file, then merge_to(multiplier).

Pinned (the script refuses other versions): lycoris-lora 4.1.3 and diffusers 0.42.1 from PyPI, in
the venv of scripts/peft_venv.sh (torch 2.15.0 there; recorded, not enforced):

    /work/peft-venv/bin/pip install diffusers==0.42.1
    /work/peft-venv/bin/python tests/diffusion/make_lycoris_unet_fixtures.py [OUT_DIR]

CI does not run this script (it only reads the committed fixtures; it has no torch); any machine
with that venv can rerun it (about 10 s, one thread so that the float sums are reproducible). A
rerun writes the same tensors (checked), but may order the metadata of the *_expected files
differently (the safetensors package orders it by hash): keep the committed files then.

Layout of OUT_DIR (default tests/diffusion/fixtures/lycoris_unet):
  base/unet/config.json, base/unet/diffusion_pytorch_model.safetensors
                          UNet2DConditionModel(**UNET_CONFIG).save_pretrained, float32
  <case>.safetensors      LycorisNetwork.save_weights after TRAIN_STEPS Adam steps
  <case>_expected.safetensors
      merged.<i>.<tensor> LyCORIS's merge at the case's multipliers[i]: the weight each adapted module's
                          layer holds after create_lycoris_from_weights(s, file, fresh UNet) and
                          merge_to(s); only adapted weights (the script asserts every other tensor
                          is left bit-identical by LyCORIS's merge)
      metadata            versions, "multipliers", the case's settings, "modules": per LyCORIS module
                          name its tensor, layer kind ("Linear", "Conv2d 3x3", "Conv2d 1x1"),
                          out channels, oft_blocks shape and whether LyCORIS's norm constraint binds
                          (its own test, ||B - B^T||_F + 1e-8 > alpha * out); "forward": per
                          multiplier, max |LyCORIS's wrapped forward - the merged UNet's forward|
                          and the largest output, on one seeded input (LyCORIS's merge is its own
                          forward for these layers up to float rounding); "loader_vs_trained": max
                          |merge_to through the loaded file - get_merged_weight of the trained
                          modules| (0: the file round-trips exactly).

The oft_blocks start random and nonzero (LyCORIS initializes them to zero, which would hide a
transposed R or a wrong sign) with a spread drawn per module, so that LyCORIS's norm constraint
binds on some modules of each layer kind and not on others; rescale starts in [0.5, 1.5]; then
TRAIN_STEPS Adam steps through LyCORIS's own forward on a seeded MSE loss. The case "diag_oft_defaults"
keeps LyCORIS's defaults instead (zero blocks, no constraint, no rescale) and is trained from there.
"""

import importlib.metadata as md
import json
import os
import shutil
import sys

import torch

LYCORIS_VERSION = "4.1.3"   # pinned: the versions these fixtures were made with
DIFFUSERS_VERSION = "0.42.1"

# A tiny SD-like U-Net: two levels (8, 16 channels), one ResNet per down level (two per up
# level), a cross-attention transformer at level 1 and in the mid block. Channel counts are
# powers of two so that BOFT (which needs out / b a power of two) can adapt every layer; the
# ResNets whose channels change get a 1x1 conv_shortcut; proj_in / proj_out are 1x1 Conv2d.
UNET_CONFIG = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
    block_out_channels=(8, 16),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=16, norm_num_groups=4, attention_head_dim=4,
    use_linear_projection=False,
)

TRAIN_STEPS = 3

# name, algo, linear_dim (LyCORIS's block size choice, also conv_dim), constraint alpha (0: off),
# rescaled, (low, high) of the per-module spread of the initial oft_blocks (None: LyCORIS's zero
# init), Adam learning rate, the multipliers merged (LyCORIS's merge_to weight; oft's --blend).
# The defaults case is merged at 1 only, to keep the fixtures under 2 MB (each merge stores the
# whole U-Net's weights, 270 KB; the blend's code path is the other cases').
CASES = [
    ("diag_oft", "diag-oft", 4, 0.1, True, (0.05, 0.6), 1e-2, [1.0, 0.5]),
    ("boft", "boft", 4, 0.05, True, (0.02, 0.3), 1e-2, [1.0, 0.5]),
    ("diag_oft_defaults", "diag-oft", 4, 0.0, False, None, 1e-2, [1.0]),
]


def layer_kind(layer):
    if isinstance(layer, torch.nn.Linear):
        return "Linear"
    kh, kw = layer.kernel_size
    return f"Conv2d {kh}x{kw}"


def sample_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 8, 8, generator=g)
    t = torch.tensor([10])
    context = torch.randn(1, 3, UNET_CONFIG["cross_attention_dim"], generator=g)
    return x, t, context


def make_case(out_dir, base_dir, name, algo, linear_dim, alpha, rescaled, spread, lr, multipliers,
              seed):
    from diffusers import UNet2DConditionModel
    from lycoris import LycorisNetwork, create_lycoris, create_lycoris_from_weights
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(os.path.join(base_dir, "unet"))
    base_state = {k: v.clone() for k, v in unet.state_dict().items()}
    # Every Linear and Conv2d of the U-Net. The targets are class state of LycorisNetwork, set
    # here explicitly: create_lycoris's default preset "full" only sets enable_conv in 4.1.3 (its
    # unet_target_module list is not a key apply_preset reads), so what it adapts is whatever the
    # class holds, by default every Linear, Conv1d/2d/3d (and norms, only with train_norm).
    LycorisNetwork.apply_preset({"target_module": ["Linear", "Conv2d"], "target_name": []})
    network = create_lycoris(unet, 1.0, linear_dim=linear_dim, linear_alpha=1, algo=algo,
                             constraint=alpha, rescaled=rescaled)
    network.apply_to()
    modules = dict(unet.named_modules())
    path_of = {"lycoris_" + p.replace(".", "_"): p for p in modules if p}
    loras = list(network.loras)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for lora in loras:
            if spread is not None:
                low, high = spread
                sigma = low * (high / low) ** torch.rand(1, generator=g).item()
                lora.oft_blocks.copy_(torch.randn(lora.oft_blocks.shape, generator=g) * sigma)
            if rescaled:
                lora.rescale.copy_(torch.rand(lora.rescale.shape, generator=g) + 0.5)
    x, t, context = sample_inputs(seed + 2)
    target = torch.randn(x.shape, generator=g)
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    for _ in range(TRAIN_STEPS):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(unet(x, t, context).sample, target)
        loss.backward()
        optimizer.step()
    adapter_path = os.path.join(out_dir, f"{name}.safetensors")
    network.save_weights(adapter_path, torch.float32, None)

    info, expected, forward, loader_gap = {}, {}, {}, 0.0
    with torch.no_grad():
        for lora in loras:
            path = path_of[lora.lora_name]
            layer = modules[path]
            q = lora.oft_blocks - lora.oft_blocks.transpose(-1, -2)
            info[lora.lora_name] = {
                "tensor": path + ".weight", "kind": layer_kind(layer),
                "out": int(layer.weight.shape[0]), "oft_blocks": list(lora.oft_blocks.shape),
                "constraint_active": bool(lora.constraint > 0 and
                                          torch.norm(q) + 1e-8 > lora.constraint),
                "norm_over_radius": (float(torch.norm(q) + 1e-8) / lora.constraint
                                     if lora.constraint > 0 else 0.0)}
        for i, s in enumerate(multipliers):
            network.set_multiplier(s)
            wrapped = unet(x, t, context).sample
            fresh = UNet2DConditionModel.from_pretrained(os.path.join(base_dir, "unet"))
            # LyCORIS's own loader (under no_grad: BOFT's make_module_from_state_dict writes
            # into a leaf that requires grad otherwise), then its merge.
            loaded, _ = create_lycoris_from_weights(s, adapter_path, fresh)
            assert len(loaded.loras) == len(loras), (name, len(loaded.loras), len(loras))
            loaded.merge_to(s)
            merged_state = fresh.state_dict()
            for lora in loras:
                tensor = info[lora.lora_name]["tensor"]
                layer = modules[path_of[lora.lora_name]]
                direct, _ = lora.get_merged_weight(multiplier=s, shape=layer.weight.shape,
                                                   device=layer.weight.device)
                loader_gap = max(loader_gap,
                                 float((direct - merged_state[tensor]).abs().max()))
                expected[f"merged.{i}.{tensor}"] = merged_state[tensor].clone()
            adapted = {v["tensor"] for v in info.values()}
            for key, value in merged_state.items():
                if key not in adapted:
                    assert torch.equal(value, base_state[key]), (name, s, key)
            out = fresh(x, t, context).sample
            forward[str(s)] = {"max_abs_diff": float((out - wrapped).abs().max()),
                               "max_abs_output": float(out.abs().max())}
            # Equal up to float rounding: a worst-case float32 bound through this U-Net (about
            # 30 layers deep, sums of up to 300 terms) is 30 * 300 * 2^-24 ~ 5e-4 of the output,
            # where a merge that is not the forward's weight moves outputs by 1e-2 or more.
            assert forward[str(s)]["max_abs_diff"] <= 5e-4 * forward[str(s)]["max_abs_output"], (
                name, s, forward[str(s)])
    metadata = {
        "lycoris_version": md.version("lycoris-lora"),
        "diffusers_version": md.version("diffusers"),
        "torch_version": torch.__version__,
        "multipliers": json.dumps(multipliers),
        "case": json.dumps({"algo": algo, "linear_dim": linear_dim, "constraint": alpha,
                            "rescaled": rescaled, "initial_spread": spread,
                            "train_steps": TRAIN_STEPS, "lr": lr}),
        "modules": json.dumps(info),
        "forward": json.dumps(forward),
        "loader_vs_trained": json.dumps(loader_gap),
    }
    save_file({k: v.contiguous() for k, v in expected.items()},
              os.path.join(out_dir, f"{name}_expected.safetensors"), metadata)
    return info, forward, loader_gap


def main():
    for package, version in (("lycoris-lora", LYCORIS_VERSION), ("diffusers", DIFFUSERS_VERSION)):
        if md.version(package) != version:
            sys.exit(f"{package} {md.version(package)} found; these fixtures are pinned to "
                     f"{version} (pip install {package}=={version})")
    torch.set_num_threads(1)
    from diffusers import UNet2DConditionModel

    out_dir = (sys.argv[1] if len(sys.argv) > 1 else
               os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "lycoris_unet"))
    base_dir = os.path.join(out_dir, "base")
    shutil.rmtree(base_dir, ignore_errors=True)
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(40)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    unet.save_pretrained(os.path.join(base_dir, "unet"))  # safetensors, float32
    for seed, (name, *settings) in enumerate(CASES, start=41):
        info, forward, loader_gap = make_case(out_dir, base_dir, name, *settings, seed)
        kinds = {}
        for v in info.values():
            counts = kinds.setdefault(v["kind"], [0, 0])
            counts[0 if v["constraint_active"] else 1] += 1
        print(f"{name}: {len(info)} modules; constraint binds/not per kind {kinds}; "
              f"forward {forward}; loader vs trained {loader_gap:.3g}")


if __name__ == "__main__":
    main()
