#!/usr/bin/env python3
"""Writes tests/dialects/fixtures/onetrainer_*: OneTrainer "OFT v2" adapter files and, in float64,
what the ComfyUI-OFTv2 loader computes from them, for test_onetrainer_adapter.cpp.

Neither OneTrainer nor ComfyUI-OFTv2 is on PyPI, so this is a test-only reference written from
the math of their published code (read, not copied):
  - OneTrainer (github Nerogar/OneTrainer): modules/module/oft_utils.py (OFTRotationModule) and
    modules/module/LoRAModule.py (OFTModule), at master 23df3832e8f213d64c337e39f9365ba46e99fed0
    (scaled_oft only) and at the preview merge ad977de0e524bf4d83b146db64a5ca0f0554977e (PR #1512:
    the clipped_oft and cans_oft buffers);
  - ComfyUI-OFTv2 (github Koratahiu/ComfyUI-OFTv2): node/oftv2_loader.py (OFTRotationUtil,
    OFTv2Adapter.load / calculate_weight) at 29bdbae896f9ed9cb8324157d95a74b83a6af300, the loader
    these files are made for (ComfyUI itself, comfy/weight_adapter/oft.py at 3684cff, reads only
    LyCORIS's oft_blocks).

Run with the scripts' venv (torch and safetensors only):

    /work/peft-venv/bin/python tests/dialects/make_onetrainer_fixtures.py [OUT_DIR]

Per case two files:
  onetrainer_<case>.safetensors           the adapter, with OneTrainer's key names:
      <name>.oft_R.weight [r, b(b-1)/2] F32 (r = 1: one block shared by all in / b blocks)
      <name>.oft_R.scaled_oft [] BOOL, <name>.oft_R.cans_oft [] BOOL (present = on),
      <name>.oft_R.clipped_oft [] F32 (the clipping radius)
  onetrainer_<case>_expected.safetensors  float64:
      <name>.weight          the base weight ([out, in] or [out, c, kh, kw], seeded random)
      <name>.clip_start      [r, b] the power iteration's start vectors (the loader draws them
                             with torch.randn on every load; fixed here so the C++ can repeat them)
      <name>.merged.<i>      the merged weight at strength[i], clipping by the power iteration
      <name>.merged_exact    (clipped cases) the merge at strength 1 with the exact spectral norm
                             instead of the estimate (the iteration's limit)
      <name>.merged_trainer  (CANS cases) the merge at strength 1 with OneTrainer's own CANS order
                             (the steps on (I + Q)^2; the loader squares after the steps)
      <name>.cans_grad_c, <name>.cans_grad_theta.after / .first   (CANS without clip) torch
                             autograd's d sum(C * R) / d theta in each order, ||G||_inf detached
                             as in OneTrainer
      <name>.x, <name>.forward   an input and OneTrainer's training forward at strength 1 (Linear:
                             the input rotated then the layer; Conv2d: conv2d with the rotated
                             kernel, padding 1); the script asserts that it equals the merged
                             weight's forward.

A rerun writes the same tensors; safetensors may order an *_expected file's metadata differently.

The generators are random and nonzero with blocks of different norms, so a transposed R, a wrong
sign, a missing 1 / (2 sqrt(b - 1)) or a clip applied to the wrong blocks all change the numbers.
"""

import math
import os
import sys

import torch

STRENGTHS = [1.0, 0.5, -0.75]
# OFTModule.initialize_weights: use_cayley_neumann=True, num_cayley_neumann_terms=5
NEUMANN_TERMS = 5


def skew(theta, b):
    """Q_i with theta_i on the strict upper triangle, row by row (torch.triu_indices order)."""
    rows, cols = torch.triu_indices(b, b, 1)
    q = torch.zeros(theta.shape[0], b, b, dtype=theta.dtype)
    q[:, rows, cols] = theta
    return q - q.transpose(1, 2)


def spectral_estimate(q, start, iterations=2):
    """The loader's power iteration: v normalized, then `iterations` times u = Qv/|Qv|,
    v = Q^T u/|Q^T u| (norms clamped below at 1e-12), then sigma = u^T Q v."""
    v = start.unsqueeze(-1)
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
    u = None
    for _ in range(iterations):
        u = q @ v
        u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-12)
        v = q.transpose(1, 2) @ u
        v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (u * (q @ v)).sum(dim=1, keepdim=True)  # [r, 1, 1]


def cans(g, steps):
    """Chebyshev-optimized Newton-Schulz as the loader runs it: X = G / ||G||_inf (max row sum,
    clamped at 1e-7), bounds [1 / ||G||_inf, 1], then per step the odd cubic c1 X + c3 X X^T X
    whose coefficients come from the bounds, and new bounds 1 -+ (K - L) / (K + L)."""
    norm = g.abs().sum(dim=-1, keepdim=True).amax(dim=-2, keepdim=True).clamp_min(1e-7)
    x = g / norm
    lo, hi = 1.0 / norm, torch.ones_like(norm)
    for _ in range(steps):
        e2 = (lo * lo + lo * hi + hi * hi) / 3.0
        k = 2.0 * e2 ** 1.5
        ell = lo * hi * (lo + hi)
        a = 6.0 / (k + ell)
        x = (a * e2) * x + (-a / 3.0) * (x @ x.transpose(1, 2) @ x)
        e = (k - ell) / (k + ell)
        lo, hi = 1.0 - e, 1.0 + e
    return x


def cans_for_autograd(g, steps):
    """cans() as OneTrainer's autograd sees it: ||G||_inf detached (`.detach()` in
    _cans_newton_schulz_iteration), hence constant Chebyshev coefficients."""
    norm = g.abs().sum(dim=-1, keepdim=True).amax(dim=-2, keepdim=True).clamp_min(1e-7).detach()
    x = g / norm
    lo, hi = 1.0 / norm, torch.ones_like(norm)
    for _ in range(steps):
        e2 = (lo * lo + lo * hi + hi * hi) / 3.0
        k = 2.0 * e2 ** 1.5
        ell = lo * hi * (lo + hi)
        a = 6.0 / (k + ell)
        x = (a * e2) * x + (-a / 3.0) * (x @ x.transpose(1, 2) @ x)
        e = (k - ell) / (k + ell)
        lo, hi = 1.0 - e, 1.0 + e
    return x


def cans_gradient(theta, b, scaled, c, square_first):
    """d sum(C * R) / d theta through scaled_oft and CANS (no clip), by torch autograd."""
    t = theta.clone().requires_grad_(True)
    q = skew(t / (2.0 * math.sqrt(b - 1)) if scaled else t, b)
    eye = torch.eye(b, dtype=q.dtype).expand_as(q)
    if square_first:
        r = cans_for_autograd((eye + q) @ (eye + q), 7)
    else:
        h = cans_for_autograd(eye + q, 7)
        r = h @ h
    (c * r).sum().backward()
    return t.grad


def rotation(theta, b, scaled, clip, cans_on, start, exact_sigma=False, square_first=False):
    """R per block as the loader computes it (in float64 here): theta / (2 sqrt(b - 1)) when
    scaled; Q clipped to spectral norm <= clip (Q * clip / max(sigma, clip)); then CANS (7 steps,
    the loader's float32 count) of G = I + Q squared, or Cayley-Neumann with 5 terms.
    square_first: OneTrainer's own CANS forward since its commit 7d415a4 (on the branch merged at
    ad977de): the 7 steps on G = (I + Q)^2, not squared afterwards."""
    if scaled:
        theta = theta / (2.0 * math.sqrt(b - 1))
    q = skew(theta, b)
    if clip is not None:
        if exact_sigma:
            sigma = torch.linalg.matrix_norm(q, ord=2).view(-1, 1, 1)
        else:
            sigma = spectral_estimate(q, start)
        q = q * (clip / torch.clamp(sigma, min=clip))
    eye = torch.eye(b, dtype=q.dtype).expand_as(q)
    if cans_on and square_first:
        return cans((eye + q) @ (eye + q), 7)
    if cans_on:
        half = cans(eye + q, 7)
        return half @ half
    r = eye + 2.0 * q
    power = q
    for _ in range(2, NEUMANN_TERMS - 1):
        power = power @ q
        r = r + 2.0 * power
    return r + power @ q


def merge(weight, rot, strength):
    """calculate_weight: Linear W + s W (R^T - I) per input block; Conv2d (4-D) W + s W_flat (R - I)
    over the flattened c * kh * kw input. One block (r = 1) is shared by every input block."""
    out = weight.shape[0]
    flat = weight.reshape(out, -1)
    b = rot.shape[-1]
    blocks = flat.shape[1] // b
    if rot.shape[0] == 1:
        rot = rot.expand(blocks, b, b)
    eye = torch.eye(b, dtype=rot.dtype)
    side = rot if weight.dim() == 4 else rot.transpose(1, 2)
    diff = torch.einsum("ork,rkc->orc", flat.reshape(out, blocks, b), side - eye)
    return weight + strength * diff.reshape(weight.shape)


def module_specs():
    """(name, kind, shape, b, shared): Linear [out, in], Conv2d [out, c, kh, kw]."""
    return [
        ("lora_unet_down_blocks_0_attentions_0_proj_in", "linear", (16, 12), 4, False),
        ("lora_te1_text_model_encoder_layers_0_mlp_fc1", "linear", (10, 16), 8, False),
        ("lora_unet_mid_block_attentions_0_to_k", "linear", (5, 8), 4, True),
        ("lora_unet_conv_in", "conv", (6, 4, 3, 3), 6, False),
        ("lora_unet_down_blocks_1_downsamplers_0_conv", "conv", (4, 2, 1, 3), 3, False),
    ]


def make_case(out_dir, case, scaled, clip, cans_on, spread, seed):
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    adapter, expected = {}, {}
    for name, kind, shape, b, shared in module_specs():
        in_features = math.prod(shape[1:])
        r = 1 if shared else in_features // b
        m = b * (b - 1) // 2
        # Block norms spread over a decade so that a clip binds on some blocks only.
        scales = torch.logspace(-1.0, 0.0, r, dtype=torch.float64) * spread
        theta = (torch.randn(r, m, generator=gen, dtype=torch.float64) * scales.view(-1, 1)).float()
        adapter[f"{name}.oft_R.weight"] = theta
        if scaled:
            adapter[f"{name}.oft_R.scaled_oft"] = torch.tensor(True)
        if clip is not None:
            adapter[f"{name}.oft_R.clipped_oft"] = torch.tensor(clip, dtype=torch.float32)
        if cans_on:
            adapter[f"{name}.oft_R.cans_oft"] = torch.tensor(True)

        weight = torch.randn(*shape, generator=gen, dtype=torch.float64)
        start = torch.randn(r, b, generator=gen, dtype=torch.float64)
        t64 = theta.double()
        clip64 = None if clip is None else float(torch.tensor(clip, dtype=torch.float32))
        expected[f"{name}.weight"] = weight
        expected[f"{name}.clip_start"] = start
        for i, s in enumerate(STRENGTHS):
            rot = rotation(t64, b, scaled, clip64, cans_on, start)
            expected[f"{name}.merged.{i}"] = merge(weight, rot, s)
        if cans_on:
            rot_trainer = rotation(t64, b, scaled, clip64, cans_on, start, square_first=True)
            expected[f"{name}.merged_trainer"] = merge(weight, rot_trainer, 1.0)
        if cans_on and clip is None:  # a generator of its own: the other tensors stay as they were
            c = torch.randn(r, b, b, generator=torch.Generator().manual_seed(seed + 1000 + r * b),
                            dtype=torch.float64)
            expected[f"{name}.cans_grad_c"] = c
            for order, first in (("after", False), ("first", True)):
                grad = cans_gradient(t64, b, scaled, c, first)
                expected[f"{name}.cans_grad_theta.{order}"] = grad
        if clip is not None:  # only where it differs, at strength 1 (the files stay small)
            rot_exact = rotation(t64, b, scaled, clip64, cans_on, start, exact_sigma=True)
            expected[f"{name}.merged_exact"] = merge(weight, rot_exact, 1.0)

        # OneTrainer's training forward (OFTModule.forward) at strength 1, against the merge.
        rot = rotation(t64, b, scaled, clip64, cans_on, start)
        full = rot.expand(in_features // b, b, b) if shared else rot
        if kind == "linear":
            x = torch.randn(3, in_features, generator=gen, dtype=torch.float64)
            x_rot = torch.einsum("...rk,rkc->...rc", x.reshape(3, -1, b), full).reshape(3, -1)
            forward = x_rot @ weight.T
            via_merge = x @ expected[f"{name}.merged.0"].T
        else:
            x = torch.randn(2, shape[1], 7, 6, generator=gen, dtype=torch.float64)
            w_rot = torch.einsum("ork,rkc->orc", weight.reshape(shape[0], -1, b), full)
            forward = torch.nn.functional.conv2d(x, w_rot.reshape(shape), padding=1)
            via_merge = torch.nn.functional.conv2d(x, expected[f"{name}.merged.0"], padding=1)
        assert torch.allclose(forward, via_merge, rtol=0, atol=1e-12), name
        expected[f"{name}.x"] = x
        expected[f"{name}.forward"] = forward

    save_file(adapter, os.path.join(out_dir, f"onetrainer_{case}.safetensors"))
    meta = {"torch": torch.__version__, "strengths": ",".join(str(s) for s in STRENGTHS)}
    save_file({k: v.contiguous() for k, v in expected.items()},
              os.path.join(out_dir, f"onetrainer_{case}_expected.safetensors"), metadata=meta)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "fixtures")
    os.makedirs(out_dir, exist_ok=True)
    # spread: the largest block's theta scale; scaled cases divide by 2 sqrt(b - 1), so larger.
    make_case(out_dir, "plain", False, None, False, 0.3, 301)
    make_case(out_dir, "scaled", True, None, False, 1.5, 302)
    make_case(out_dir, "clipped", False, 0.5, False, 0.6, 303)
    # Large enough that 7 CANS steps have not converged on the larger blocks: the loader's R is
    # then neither exact Cayley nor OneTrainer's own (square-first) CANS.
    make_case(out_dir, "cans", False, None, True, 8.0, 304)
    make_case(out_dir, "all", True, 0.3, True, 2.5, 305)


if __name__ == "__main__":
    main()
