"""Outputs of a few oft ops under the instruction-set level this process imported (OFT_ISA), for
test_isa_levels.py, which runs this once per level in a subprocess and compares the files.

    OFT_ISA=x86-64-v3 python python/tests/isa_outputs.py OUT.npz
"""
import sys

import numpy as np
import torch

import oft
import oft.torch as ot

# Shapes that reach the register tiles and the panel loops: b = 16 and 32, rows not a multiple of
# any tile height.
CASES = [(256, 16, 77), (512, 32, 130)]


def outputs():
    result = {}
    for d, b, n in CASES:
        g = np.random.default_rng(d + b)
        theta = 0.2 * g.standard_normal((d // b, b * (b - 1) // 2))
        x = g.standard_normal((n, d))
        dy = g.standard_normal((n, d))
        for dtype in ("float64", "float32"):
            for name, policy in (("neumann3", oft.Policy.cayley_neumann(3)),
                                 ("cayley", oft.Policy.cayley())):
                tag = f"{dtype}_{name}_d{d}_b{b}"
                rot = oft.Rotation(d, b, policy=policy, dtype=dtype)
                rot.set_generators(theta.astype(dtype))
                blocks = np.zeros((d, b), dtype)
                rot.rotation_blocks(blocks)
                y = np.zeros((n, d), dtype)
                rot.apply(x.astype(dtype), y)
                dx = np.zeros((n, d), dtype)
                dtheta = np.zeros(theta.shape, dtype)
                rot.backward(x.astype(dtype), dy.astype(dtype), dx, dtheta)
                result.update({f"{tag}_R": blocks, f"{tag}_y": y, f"{tag}_dx": dx,
                               f"{tag}_dtheta": dtheta})
        # bfloat16 activations through the float32 operator, in both arithmetics this build has.
        xb = torch.from_numpy(x).bfloat16()
        dyb = torch.from_numpy(dy).bfloat16()
        modes = ["float"] + (["dot_product"] if oft.has_bf16_dot_product else [])
        for mode in modes:
            tag = f"bf16_{mode}_d{d}_b{b}"
            rot = oft.Rotation(d, b, policy=oft.Policy.cayley_neumann(3), dtype="float32")
            rot.bf16_arithmetic = mode
            rot.set_generators(theta.astype("float32"))
            y = torch.zeros(n, d, dtype=torch.bfloat16)
            rot.apply(xb, y)
            dx = torch.zeros(n, d, dtype=torch.bfloat16)
            dtheta = torch.zeros(theta.shape, dtype=torch.float32)
            rot.backward(xb, dyb, dx, dtheta)
            result.update({f"{tag}_y": y.float().numpy(), f"{tag}_dx": dx.float().numpy(),
                           f"{tag}_dtheta": dtheta.numpy()})
    return result


if __name__ == "__main__":
    torch.set_num_threads(1)
    oft.set_num_threads(2)
    out = outputs()
    out["level"] = np.array(oft.build_info()["level"])
    np.savez(sys.argv[1], **out)
