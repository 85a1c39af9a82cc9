#!/usr/bin/env python3
"""Writes peft_reference.safetensors: what Hugging Face PEFT's own OFT code computes, for
oft's C++ test test_peft_reference (which needs no Python).

Run with the real packages (a venv with torch, safetensors and PEFT >= 0.18; a second
install of PEFT 0.17.1 for the legacy polynomial):

    python3 -m venv /tmp/peftvenv && /tmp/peftvenv/bin/pip install peft==0.18.0 safetensors
    /tmp/peftvenv/bin/pip install --no-deps --target /tmp/peft0171 peft==0.17.1
    /tmp/peftvenv/bin/python tests/peft/make_reference.py --legacy-path /tmp/peft0171

Tensors (float64 unless said):
  theta              [g, m]      generators (b = 5, g = 3), rows of increasing size
  current_T{T}       [g, b, b]   OFTRotationModule._cayley_batch(theta, b, True, T), T = 0..8,
                                 PEFT >= 0.18
  legacy_T{T}        [g, b, b]   the same with PEFT 0.17.1 (the pre-0.18 polynomial)
  exact              [g, b, b]   _cayley_batch(theta, b, use_cayley_neumann=False)
  coft_eps, coft_rows            the (eps, P) pairs of the radius table (float64, int32)
  coft_radius        [n]  F32    eps * 1 / torch.sqrt(torch.tensor(P)), as _project_batch does
  coft_theta         [P, m] F32  generators of a P = 4 layer, two inside and two outside the ball
  coft_projected     [P, m] F32  _project_batch(coft_theta, eps=coft_projection_eps)
  coft_projection_eps [1]        the eps used for coft_projected
Metadata: the PEFT, torch and safetensors versions that made the file.
"""

import argparse
import subprocess
import sys
from pathlib import Path

import torch

B = 5
M = B * (B - 1) // 2
TERMS = range(0, 9)
PROJECTION_EPS = 6e-5
COFT_TABLE = [(6e-5, 1), (6e-5, 3), (6e-5, 7), (6e-5, 12), (6e-5, 96), (1e-3, 5), (0.3, 11)]


def rotation_module(block_share=False, rows=3, use_cayley_neumann=True, terms=5):
    from peft.tuners.oft.layer import OFTRotationModule

    return OFTRotationModule(rows, M, B, rows * B, block_share=block_share,
                             use_cayley_neumann=use_cayley_neumann, num_cayley_neumann_terms=terms)


def generators():
    g = torch.Generator().manual_seed(7)
    theta = torch.rand(3, M, generator=g, dtype=torch.float64) * 2 - 1
    for i, scale in enumerate([0.1, 0.35, 0.6]):  # ||Q||_2 grows from row to row
        theta[i] *= scale / theta[i].norm()
    return theta


def polynomials(prefix):
    module = rotation_module()
    theta = generators()
    with torch.no_grad():
        return {f"{prefix}_T{t}": module._cayley_batch(theta, B, True, t).contiguous() for t in TERMS}


def legacy_main(out):
    """Child process with PEFT 0.17.1 first on sys.path: writes the legacy polynomials."""
    import peft
    from safetensors.torch import save_file

    assert peft.__version__.startswith("0.17"), peft.__version__
    save_file(polynomials("legacy"), out, metadata={"peft": peft.__version__})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--legacy-path", required=True, help="a --target install of peft==0.17.1")
    parser.add_argument("--out", default=str(Path(__file__).parent / "fixtures" / "peft_reference.safetensors"))
    parser.add_argument("--legacy-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.legacy_child:
        legacy_main(args.legacy_child)
        return

    import peft
    import safetensors
    from safetensors.torch import load_file, save_file

    assert tuple(int(p) for p in peft.__version__.split(".")[:2]) >= (0, 18), peft.__version__
    tensors = {"theta": generators()}
    tensors.update(polynomials("current"))
    with torch.no_grad():
        tensors["exact"] = rotation_module()._cayley_batch(generators(), B, False).contiguous()

    # COFT radius: the expression _project_batch evaluates, for several (eps, P).
    tensors["coft_eps"] = torch.tensor([e for e, _ in COFT_TABLE], dtype=torch.float64)
    tensors["coft_rows"] = torch.tensor([p for _, p in COFT_TABLE], dtype=torch.int32)
    tensors["coft_radius"] = torch.stack(
        [(e * 1 / torch.sqrt(torch.tensor(p))).reshape(()) for e, p in COFT_TABLE]).to(torch.float32)

    # COFT projection of a 4-generator layer in float32.
    coft = rotation_module(rows=4)
    g = torch.Generator().manual_seed(11)
    theta32 = (torch.rand(4, M, generator=g) * 2 - 1).to(torch.float32)
    for i, norm in enumerate([1e-6, 2e-5, 5e-5, 3e-3]):  # radius 3e-5: two inside, two outside
        theta32[i] *= norm / theta32[i].norm()
    with torch.no_grad():
        tensors["coft_theta"] = theta32.clone()
        tensors["coft_projected"] = coft._project_batch(theta32.clone(), eps=PROJECTION_EPS).contiguous()
    tensors["coft_projection_eps"] = torch.tensor([PROJECTION_EPS], dtype=torch.float64)

    legacy_file = Path(args.out).with_suffix(".legacy.tmp")
    env_path = args.legacy_path
    subprocess.run([sys.executable, __file__, "--legacy-path", env_path, "--legacy-child",
                    str(legacy_file)], check=True,
                   env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
    legacy = load_file(str(legacy_file))
    legacy_file.unlink()
    tensors.update(legacy)

    save_file(tensors, args.out, metadata={
        "peft": peft.__version__, "peft_legacy": "0.17.1", "torch": torch.__version__,
        "safetensors": safetensors.__version__, "made_by": "tests/peft/make_reference.py"})
    print(f"wrote {args.out}: {len(tensors)} tensors")


if __name__ == "__main__":
    main()
