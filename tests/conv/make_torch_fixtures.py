#!/usr/bin/env python3
"""Writes tests/conv/fixtures/torch_conv.safetensors: PyTorch's own Conv1d/Conv2d/Conv3d outputs
(float64) for non-square kernels with stride, padding and dilation per axis, so that
tests/conv/test_torch_conv.cpp anchors oft::conv's index arithmetic (conv_direct, im2col's
(c, a, i, j) patch order, the output shapes) to PyTorch's rather than to itself.

    /work/peft-venv/bin/python tests/conv/make_torch_fixtures.py [OUT_DIR]

Per case <name>: <name>.x, <name>.weight, <name>.bias, <name>.out, and <name>.geometry (int64:
in, out, kd, kh, kw, sd, sh, sw, pd, ph, pw, dd, dh, dw, then the input's d, h, w).
"""

import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

# name, in, out, kernel (d, h, w), stride, padding, dilation, input (d, h, w); d = 1 for 2-D.
CASES = [
    ("conv2d_3x5", 3, 4, (1, 3, 5), (1, 2, 1), (0, 1, 2), (1, 1, 2), (1, 9, 12)),
    ("conv1d_k5", 2, 3, (1, 1, 5), (1, 1, 2), (0, 0, 2), (1, 1, 1), (1, 1, 17)),
    ("conv3d_2x3x1", 2, 3, (2, 3, 1), (1, 2, 1), (1, 0, 1), (2, 1, 1), (5, 8, 4)),
]


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "fixtures")
    torch.manual_seed(3)
    tensors = {}
    for name, cin, cout, k, s, p, d, size in CASES:
        kind = name[:6]
        if kind == "conv1d":
            x = torch.randn(2, cin, size[2], dtype=torch.float64)
            w = torch.randn(cout, cin, k[2], dtype=torch.float64)
            b = torch.randn(cout, dtype=torch.float64)
            out = F.conv1d(x, w, b, stride=s[2], padding=p[2], dilation=d[2])
        elif kind == "conv2d":
            x = torch.randn(2, cin, size[1], size[2], dtype=torch.float64)
            w = torch.randn(cout, cin, k[1], k[2], dtype=torch.float64)
            b = torch.randn(cout, dtype=torch.float64)
            out = F.conv2d(x, w, b, stride=s[1:], padding=p[1:], dilation=d[1:])
        else:
            x = torch.randn(2, cin, *size, dtype=torch.float64)
            w = torch.randn(cout, cin, *k, dtype=torch.float64)
            b = torch.randn(cout, dtype=torch.float64)
            out = F.conv3d(x, w, b, stride=s, padding=p, dilation=d)
        tensors[name + ".x"] = x.contiguous()
        tensors[name + ".weight"] = w.contiguous()
        tensors[name + ".bias"] = b
        tensors[name + ".out"] = out.contiguous()
        tensors[name + ".geometry"] = torch.tensor([cin, cout, *k, *s, *p, *d, *size],
                                                   dtype=torch.int64)
    save_file(tensors, os.path.join(out_dir, "torch_conv.safetensors"),
              metadata={"torch": torch.__version__})


if __name__ == "__main__":
    main()
