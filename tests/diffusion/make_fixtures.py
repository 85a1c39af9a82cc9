"""Writes the tiny diffusion checkpoints that tests/tools/check_cli.cmake merges with `oft merge`
(the library itself is tested by test_diffusion_merge.cpp on bases it writes). Real Stable
Diffusion 1.5 names, shapes small enough for tests/dialects/fixtures/kohya_k4.safetensors (kohya
sd-scripts OFT: to_out.0 rotates 24 channels, to_q 16, mid-block proj_in 12):

  sd15_tiny.safetensors     single file, the original (LDM) names model.diffusion_model.*,
                            a CLIP text-encoder tensor and a VAE tensor (left as they are)
  sd15_diffusers/           diffusers folder: unet/diffusion_pytorch_model.safetensors,
                            unet/config.json, model_index.json

Deterministic (numpy seed 30); run with any Python that has numpy and safetensors:
  python tests/diffusion/make_fixtures.py tests/diffusion/fixtures
"""

import json
import os
import sys

import numpy as np
from safetensors.numpy import save_file

ATTN = "transformer_blocks.0.attn1"
UNET = {  # diffusers name -> (LDM name, shape)
    f"down_blocks.0.attentions.0.{ATTN}.to_out.0.weight":
        (f"input_blocks.1.1.{ATTN}.to_out.0.weight", (24, 8)),
    f"down_blocks.0.attentions.0.{ATTN}.to_q.weight":
        (f"input_blocks.1.1.{ATTN}.to_q.weight", (16, 8)),
    "mid_block.attentions.0.proj_in.weight": ("middle_block.1.proj_in.weight", (12, 12, 1, 1)),
    "conv_in.weight": ("input_blocks.0.0.weight", (8, 4, 3, 3)),
    "conv_in.bias": ("input_blocks.0.0.bias", (8,)),
}


def main(out):
    rng = np.random.default_rng(30)
    values = {name: rng.uniform(-1, 1, shape).astype(np.float16)
              for name, (_, shape) in UNET.items()}
    single = {"model.diffusion_model." + UNET[name][0]: v for name, v in values.items()}
    single["cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight"] = (
        rng.uniform(-1, 1, (6, 16)).astype(np.float16))
    single["first_stage_model.decoder.conv_in.weight"] = (
        rng.uniform(-1, 1, (4, 4, 3, 3)).astype(np.float16))
    os.makedirs(out, exist_ok=True)
    save_file(single, os.path.join(out, "sd15_tiny.safetensors"), metadata={"format": "pt"})
    unet = os.path.join(out, "sd15_diffusers", "unet")
    os.makedirs(unet, exist_ok=True)
    save_file(values, os.path.join(unet, "diffusion_pytorch_model.safetensors"),
              metadata={"format": "pt"})
    with open(os.path.join(unet, "config.json"), "w") as f:
        json.dump({"_class_name": "UNet2DConditionModel", "layers_per_block": 2}, f)
        f.write("\n")
    with open(os.path.join(out, "sd15_diffusers", "model_index.json"), "w") as f:
        json.dump({"_class_name": "StableDiffusionPipeline",
                   "unet": ["diffusers", "UNet2DConditionModel"]}, f)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "fixtures"))
