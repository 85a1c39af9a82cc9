"""Run-time instruction-set dispatch (oft/_dispatch.py): the choice of level, OFT_ISA and its
refusals, oft.build_info(), and the same numbers from every level this CPU runs (isa_outputs.py in
one subprocess per level, compared with the reference level: native where this build has it,
otherwise the best level)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import oft
from oft import _dispatch

HERE = Path(__file__).resolve().parent
VERSION_HEADER = HERE.parents[1] / "include" / "oft" / "version.hpp"
V4 = set(_dispatch.REQUIRED_FLAGS["x86-64-v4"])


def test_build_info_names_the_running_level():
    info = oft.build_info()
    for key in ("level", "chosen", "levels_built", "cpu_levels", "compiled_flags", "compiler",
                "bf16_dot_product", "openmp", "io", "io_level", "cuda", "version", "machine"):
        assert key in info, key
    assert info["level"] in info["levels_built"]
    assert info["level"] in info["cpu_levels"]
    assert info["bf16_dot_product"] == oft.has_bf16_dot_product
    assert info["io"] == oft.has_io and info["cuda"] == oft.has_cuda
    if info["io"]:
        # oft._io is compiled once, at the most widely runnable level built (the wheel's
        # x86-64-v3), whatever level _core runs at.
        assert info["io_level"] in info["cpu_levels"]
        if "x86-64-v3" in info["levels_built"]:
            assert info["io_level"] == "x86-64-v3"
    else:
        assert info["io_level"] is None
    level = info["level"]
    if level in ("x86-64-v3", "x86-64-v4", "avx512bf16"):
        assert {"avx2", "fma"} <= set(info["compiled_flags"])
        assert ("avx512f" in info["compiled_flags"]) == (level != "x86-64-v3")
        assert ("avx512_bf16" in info["compiled_flags"]) == (level == "avx512bf16")
        assert info["bf16_dot_product"] == (level == "avx512bf16")
    if os.environ.get("OFT_ISA", "") not in ("", "auto"):
        assert info["level"] == os.environ["OFT_ISA"] and info["chosen"] == "forced by OFT_ISA"


def test_version_is_the_header_s():
    assert oft.__version__ == oft.build_info()["version"]
    if VERSION_HEADER.exists():  # a checkout (the wheel's tests run from the repository root)
        match = re.search(r'#define OFT_VERSION_STRING "([^"]+)"', VERSION_HEADER.read_text())
        assert match and oft.__version__ == match.group(1)


def test_choose_takes_the_best_level_the_cpu_runs():
    built = ("avx512bf16", "x86-64-v4", "x86-64-v3")
    v3 = set(_dispatch.REQUIRED_FLAGS["x86-64-v3"])
    assert _dispatch.choose(built, frozenset(V4 | {"avx512_bf16"}), "")[0] == "avx512bf16"
    assert _dispatch.choose(built, frozenset(V4), "")[0] == "x86-64-v4"
    assert _dispatch.choose(built, frozenset(v3), "auto")[0] == "x86-64-v3"
    # AVX-512 F without VL (a Knights Landing) is not x86-64-v4.
    assert _dispatch.choose(built, frozenset(v3 | {"avx512f", "avx512cd"}), "")[0] == "x86-64-v3"
    # No /proc/cpuinfo: the lowest level of the build.
    assert _dispatch.choose(built, None, "")[0] == "x86-64-v3"
    assert _dispatch.choose(("native",), frozenset(), "") == ("native", "the best level this CPU runs")


def test_choose_refuses_by_name():
    built = ("avx512bf16", "x86-64-v4", "x86-64-v3")
    with pytest.raises(ValueError, match=r"OFT_ISA='avx9' is not a level"):
        _dispatch.choose(built, frozenset(V4), "avx9")
    with pytest.raises(RuntimeError, match=r"OFT_ISA=avx512bf16: this CPU lacks .*avx512_bf16"):
        _dispatch.choose(built, frozenset(V4), "avx512bf16")
    with pytest.raises(RuntimeError, match=r"OFT_ISA=x86-64-v4: this CPU lacks .*avx512bw avx512cd "
                                           r"avx512dq avx512vl"):
        _dispatch.choose(built, frozenset(_dispatch.REQUIRED_FLAGS["x86-64-v3"] + ("avx512f",)),
                         "x86-64-v4")
    with pytest.raises(RuntimeError, match=r"OFT_ISA=native: this build has no native module"):
        _dispatch.choose(built, frozenset(V4), "native")
    with pytest.raises(RuntimeError, match=r"runs none of this build's levels.*x86-64-v3 needs "
                                           r".*avx2"):
        _dispatch.choose(built, frozenset({"sse4_2", "avx"}), "")


def test_import_with_a_bad_oft_isa_fails_by_name():
    env = dict(os.environ, OFT_ISA="avx9")
    run = subprocess.run([sys.executable, "-c", "import oft"], env=env, capture_output=True,
                         text=True, check=False)
    assert run.returncode != 0 and "OFT_ISA='avx9' is not a level" in run.stderr


# --- The same numbers from every level ------------------------------------------------------------

U32 = 2.0**-24


def gamma(n, u=U32):
    return n * u / (1 - n * u)


def level_outputs(level, tmp_path):
    out = tmp_path / f"{level}.npz"
    env = dict(os.environ, OFT_ISA=level)
    subprocess.run([sys.executable, str(HERE / "isa_outputs.py"), str(out)], env=env, check=True)
    with np.load(out) as f:
        assert str(f["level"]) == level
        return {k: f[k] for k in f.files if k != "level"}


def cpu_levels():
    return oft.build_info()["cpu_levels"]


def inputs(d, b, n):
    """isa_outputs.py's inputs for one case (same generator, same order)."""
    g = np.random.default_rng(d + b)
    theta = 0.2 * g.standard_normal((d // b, b * (b - 1) // 2))
    return theta, g.standard_normal((n, d)), g.standard_normal((n, d))


def blockwise(a, b_, d, b):
    """[n, d] x [d, b] stacked blocks -> [n, d]: each block's a_i @ b_i."""
    out = np.empty((a.shape[0], d))
    for i in range(d // b):
        out[:, i * b:(i + 1) * b] = a[:, i * b:(i + 1) * b] @ b_[i * b:(i + 1) * b]
    return out


def abs_vjp(theta, d, b, policy):
    """|J_i| of dtheta_i = J_i vec(dL/dR_i) for every block, [r, b(b-1)/2, b*b], from
    oft's own backward_from_blocks applied to each unit block gradient (it is linear in them)."""
    rot = oft.Rotation(d, b, policy=policy, dtype="float64")
    rot.set_generators(theta)
    jac = np.zeros((d // b, theta.shape[1], b * b))
    for idx in range(b * b):
        blocks = np.zeros((d, b))
        blocks[idx // b::b, idx % b] = 1.0
        out = np.zeros(theta.shape)
        rot.backward_from_blocks(blocks, out)
        jac[:, :, idx] = out
    return np.abs(jac)


def compare_levels(ref, got, label):
    """Bit for bit where the arithmetic is the same order at both levels, else within the float
    bounds each level's result keeps against the exact value (so twice that apart at most):
    - R (Neumann: the same products at every level, bit for bit; Cayley: an LU solve per block,
      backward stable: |dR| <= 2 gamma_3b cond(I - Q) |R|, cond <= sqrt(1 + 2 |theta_i|^2));
    - y = x R, dx = dy R^T: each level within gamma_b |X||R_level| of its own R's product, plus the
      two R's difference: gamma_b (|X||R_a| + |X||R_b|) + |X||R_a - R_b|;
    - dtheta = J vec(X^T dY): the token sums of G = X^T dY are in another order (vector width):
      |dG| <= 2 gamma_{n+1} |X|^T|dY|, through |J| (exact, from backward_from_blocks), plus the
      VJP's own rounding on the two G, 2 gamma_4b |J| |X|^T|dY|.
    Returns the report lines; asserts."""
    import torch
    from isa_outputs import CASES

    report = []
    for d, b, n in CASES:
        theta, x, dy = inputs(d, b, n)
        for dtype, u in (("float64", 2.0**-53), ("float32", 2.0**-24), ("bf16", 2.0**-24)):
            for name, policy in (("neumann3", oft.Policy.cayley_neumann(3)),
                                 ("cayley", oft.Policy.cayley())):
                if dtype == "bf16":
                    if name != "neumann3":
                        continue
                    tag = f"bf16_float_d{d}_b{b}"
                    rtag = f"float32_neumann3_d{d}_b{b}"
                    xs = torch.from_numpy(x).bfloat16().double().numpy()
                    dys = torch.from_numpy(dy).bfloat16().double().numpy()
                else:
                    tag = rtag = f"{dtype}_{name}_d{d}_b{b}"
                    xs = x.astype(dtype).astype(np.float64)
                    dys = dy.astype(dtype).astype(np.float64)

                def gam(k):
                    return k * u / (1 - k * u)

                ra = ref[f"{rtag}_R"].astype(np.float64)
                rb = got[f"{rtag}_R"].astype(np.float64)
                dr = np.abs(ra - rb)
                same_order = name == "neumann3"
                if dtype != "bf16":
                    if same_order:
                        assert np.array_equal(ra, rb), f"{label} {tag}_R"
                    else:
                        cond = np.sqrt(1 + 2 * np.sum(theta**2, axis=1))
                        scale = np.repeat(cond * np.array([np.linalg.norm(ra[i * b:(i + 1) * b], 2)
                                                           for i in range(d // b)]), b)
                        assert np.all(dr <= 2 * gam(3 * b) * scale[:, None]), f"{label} {tag}_R"
                for out, a, sgn in (("y", xs, False), ("dx", dys, True)):
                    va, vb = ref[f"{tag}_{out}"], got[f"{tag}_{out}"]
                    bitwise = np.array_equal(va, vb)
                    report.append(f"{label} {tag}_{out}: " + ("bit for bit" if bitwise else
                                  f"max |diff| {np.max(np.abs(va - vb)):.3g}"))
                    if same_order:
                        assert bitwise, report[-1]
                        continue

                    def t(m):
                        return np.concatenate([m[i * b:(i + 1) * b].T for i in range(d // b)]) \
                            if sgn else m
                    bound = (gam(b) * (blockwise(np.abs(a), np.abs(t(ra)), d, b)
                                       + blockwise(np.abs(a), np.abs(t(rb)), d, b))
                             + blockwise(np.abs(a), t(dr), d, b))
                    assert np.all(np.abs(va.astype(np.float64) - vb) <= bound), report[-1]
                va, vb = ref[f"{tag}_dtheta"], got[f"{tag}_dtheta"]
                bitwise = np.array_equal(va, vb)
                report.append(f"{label} {tag}_dtheta: " + ("bit for bit" if bitwise else
                              f"max |diff| {np.max(np.abs(va - vb)):.3g}"))
                if bitwise:
                    continue
                jac = abs_vjp(theta, d, b, policy)
                gabs = np.stack([(np.abs(xs[:, i * b:(i + 1) * b]).T
                                  @ np.abs(dys[:, i * b:(i + 1) * b])).ravel()
                                 for i in range(d // b)])
                bound = (2 * gam(n + 1) + 2 * gam(4 * b)) * np.einsum("rpq,rq->rp", jac, gabs)
                assert np.all(np.abs(va.astype(np.float64) - vb) <= bound), report[-1]
    return report


@pytest.mark.skipif(len(cpu_levels()) < 2, reason="one level in this build runs on this CPU")
def test_levels_give_the_same_numbers(tmp_path):
    levels = cpu_levels()
    reference = "native" if "native" in levels else levels[0]
    ref = level_outputs(reference, tmp_path)
    report = []
    for level in levels:
        if level == reference:
            continue
        got = level_outputs(level, tmp_path)
        if {level, reference} == {"x86-64-v4", "avx512bf16"}:
            # The same code but for the vdpbf16ps kernels, which the float and float64 ops never
            # reach: every shared output bit for bit.
            for key in ref:
                if key in got:
                    assert np.array_equal(ref[key], got[key]), f"{level} vs {reference}: {key}"
            report.append(f"{level} vs {reference}: all {len(got)} shared outputs bit for bit")
            continue
        report += compare_levels(ref, got, f"{level} vs {reference}")
    print("\n".join(report))


@pytest.mark.skipif("avx512bf16" not in cpu_levels() or len(cpu_levels()) < 2,
                    reason="no AVX512_BF16 level and another to compare it with on this CPU")
def test_dot_product_level_within_the_bf16_bound(tmp_path):
    """The avx512bf16 level's default bfloat16 arithmetic (vdpbf16ps) against the float path of
    the lowest level, both against the double product, within docs/bf16.md's bounds."""
    lowest = [lv for lv in cpu_levels() if lv != "avx512bf16"][-1]
    dot = level_outputs("avx512bf16", tmp_path)
    flt = level_outputs(lowest, tmp_path)
    import torch
    from isa_outputs import CASES

    for d, b, n in CASES:
        g = np.random.default_rng(d + b)
        theta = 0.2 * g.standard_normal((d // b, b * (b - 1) // 2))
        x = torch.from_numpy(g.standard_normal((n, d))).bfloat16().double().numpy()
        R = flt[f"float32_neumann3_d{d}_b{b}_R"].astype(np.float64)  # [d, b], block i = rows ib..
        exact = np.empty_like(x)
        bound_abs = np.empty_like(x)
        absd = np.empty_like(x)
        for i in range(d // b):
            Ri = R[i * b:(i + 1) * b]
            xi = x[:, i * b:(i + 1) * b]
            exact[:, i * b:(i + 1) * b] = xi @ Ri
            bound_abs[:, i * b:(i + 1) * b] = np.abs(xi) @ np.abs(Ri)
            absd[:, i * b:(i + 1) * b] = np.abs(xi) @ np.abs(Ri - np.eye(b))
        del theta
        # DotProduct (docs/bf16.md): E = 2^-8' |X||D| + gamma_{b+1} (|X| + (1+2^-8')|X||D|) + F,
        # |Y - X R| <= 2^-8 (|X R| + E) + E.
        u8 = 2.0**-8 + 2.0**-22
        big_f = (2 * b + 4) * 2.0**-126 * (1 + np.max(np.abs(R - np.tile(np.eye(b), (d // b, 1)))))
        e = u8 * absd + gamma(b + 1) * (np.abs(x) + (1 + u8) * absd) + big_f
        y_dot = dot[f"bf16_dot_product_d{d}_b{b}_y"]
        assert np.all(np.abs(y_dot - exact) <= 2.0**-8 * (np.abs(exact) + e) + e)
        # Float: |Y - X R| <= 2^-8 |Y_float| + 2 gamma_b |X||R|.
        y_flt = flt[f"bf16_float_d{d}_b{b}_y"]
        assert np.all(np.abs(y_flt - exact) <= 2.0**-8 * np.abs(y_flt) + 2 * gamma(b) * bound_abs)
