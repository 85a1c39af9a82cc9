"""Checks the numpy reference of docs/families.md (reference.py) against what PEFT computed
(fixtures/families_reference.safetensors, written by make_reference.py), so that the written
math is known to be PEFT's before any C++ is checked against it.

    /work/peft-venv/bin/python -m pytest -q tests/families

Needs numpy, safetensors and pytest; the permutation grid test also imports PEFT and is skipped
without it.

Tolerance. Everything is float64 on both sides and the two differ only in the order of rounding:
each entry of Y, W' or a gradient is a short chain of backward-stable steps (a b x b solve with
cond(I + S) = sqrt(1 + rho^2) <= 3 here, m <= 5 small products, a length-d dot product, d <= 32).
A normwise bound is then a small multiple of (d + m b) u, u = 1.1e-16, i.e. about 1e-14; the
largest error seen is printed by the tests (-s) and is below 2e-15. REL = 1e-12 leaves a
hundredfold margin over that bound for other BLAS builds and CPUs, while a wrong convention
(transposed blocks, reversed factor or reflection order, no 1/2, W0 M for W0 M^T) moves Y by
O(1): test_negative_controls shows each of those moves it by more than 1e-2. Errors are
normwise, ||a - b||_F / ||b||_F, so that entries near zero do not decide. Gradients from the
complex step (Im f(p + i h e_k) / h, h = 1e-30) carry no truncation error, so the same bound
holds for them.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

import reference as ref

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "fixtures" / "families_reference.safetensors"
REL = 1e-12
COMPLEX_STEP = 1e-30


def load():
    with safe_open(str(FIXTURE), "np") as f:
        info = json.loads(f.metadata()["reference"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return info, tensors


INFO, T = load()
CASES = {c["name"]: c for c in INFO["cases"]}
BOFT = [n for n, c in CASES.items() if c["family"] == "boft"]
HRA = [n for n, c in CASES.items() if c["family"] == "hra"]


def rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def case_tensors(name):
    prefix = name + "."
    return {k[len(prefix):]: v for k, v in T.items() if k.startswith(prefix)}


def forward(name, t, **override):
    """The reference forward of case `name` on the fixture's tensors (or overrides)."""
    t = {**t, **override}
    if CASES[name]["family"] == "boft":
        return ref.boft_forward(t["X"], t["W0"], t.get("bias"), t["boft_R"], t["boft_s"])
    gs = CASES[name]["derived"]["apply_GS"]
    return ref.hra_forward(t["X"], t["W0"], t.get("bias"), t["hra_u"], gs)


def test_fixture_was_made_by_the_pinned_peft():
    assert INFO["versions"]["peft"] == "0.21.2"
    assert len(BOFT) >= 6 and len(HRA) >= 6
    assert {c["derived"]["m"] for n, c in CASES.items() if n in BOFT} >= {1, 2, 3, 4, 5}


# ---------------------------------------------------------------------------------------------
# BOFT

@pytest.mark.parametrize("name", BOFT)
def test_boft_shapes_follow_the_config(name):
    c, t = CASES[name], case_tensors(name)
    cfg = c["peft_config"]
    m, N, b = ref.boft_shapes(c["in_features"], cfg.get("boft_block_size", 4),
                              cfg.get("boft_block_num", 0), cfg["boft_n_butterfly_factor"])
    assert t["boft_R"].shape == (m, N, b, b) == (c["derived"]["m"], c["derived"]["N"],
                                                 c["derived"]["b"], c["derived"]["b"])
    assert t["boft_s"].shape == (c["out_features"], 1)


@pytest.mark.parametrize("name", BOFT)
def test_boft_permutation_formula(name):
    t = case_tensors(name)
    m, N, b, _ = t["boft_R"].shape
    for i in range(m):
        expected = ref.boft_perm(N * b, b, i) if m > 1 else np.arange(N * b)
        assert np.array_equal(t["perm"][i], expected)
        # the block coordinates are pi_i^-1 laid out block by block
        inverse = np.argsort(expected)
        assert np.array_equal(ref.boft_block_coords(N * b, b, i).ravel(), inverse)


def test_boft_permutation_formula_on_a_grid():
    layer = pytest.importorskip("peft.tuners.boft.layer")
    checked = 0
    for d in range(2, 129, 2):
        for b in range(2, d + 1, 2):
            for m in range(2, 8):
                N = d // b
                if d % b or N % 2 ** (m - 1):
                    continue
                for i in range(m):
                    peft_perm = layer.BOFTLayer.block_butterfly_perm(None, d, N // 2 ** i, b // 2, m - 1)
                    assert np.array_equal(peft_perm.numpy(), ref.boft_perm(d, b, i)), (d, b, m, i)
                    checked += 1
    assert checked > 500


@pytest.mark.parametrize("name", BOFT)
def test_boft_rotation_matches_peft(name):
    t = case_tensors(name)
    M = ref.boft_rotation(t["boft_R"])
    err = rel(M, t["rotation"])
    print(f"{name}: rotation {err:.1e}")
    assert err < REL
    assert np.linalg.norm(M.T @ M - np.eye(len(M))) < 1e-13
    assert np.linalg.norm(M - np.eye(len(M))) > 0.5  # the adapter is far from the identity
    # matrix-free apply == dense
    X = t["X"]
    assert rel(ref.boft_apply(X, t["boft_R"]), X @ M) < REL


@pytest.mark.parametrize("name", BOFT + HRA)
def test_forward_matches_peft(name):
    t = case_tensors(name)
    err = rel(forward(name, t), t["Y"])
    print(f"{name}: Y {err:.1e}")
    assert err < REL


@pytest.mark.parametrize("name", BOFT + HRA)
def test_merge_matches_peft(name):
    t = case_tensors(name)
    if CASES[name]["family"] == "boft":
        W = ref.boft_merge(t["W0"], t["boft_R"], t["boft_s"])
    else:
        W = ref.hra_merge(t["W0"], t["hra_u"], CASES[name]["derived"]["apply_GS"])
    err = rel(W, t["W_merged"])
    print(f"{name}: W' {err:.1e}")
    assert err < REL
    # the merged weight gives the unmerged forward
    Y = t["X"] @ W.T + (t["bias"] if "bias" in t else 0.0)
    assert rel(Y, t["Y"]) < REL


def complex_step_gradient(name, t, key):
    """dL/dt[key] for L = sum(Y * G), one complex forward per entry."""
    base = t[key]
    grad = np.zeros(base.shape)
    for idx in np.ndindex(base.shape):
        p = base.astype(complex)
        p[idx] += 1j * COMPLEX_STEP
        grad[idx] = np.sum(forward(name, t, **{key: p}) * t["G"]).imag / COMPLEX_STEP
    return grad


@pytest.mark.parametrize("name", BOFT + HRA)
def test_gradients_match_peft(name):
    t = case_tensors(name)
    keys = ["X", "boft_R", "boft_s"] if CASES[name]["family"] == "boft" else ["X", "hra_u"]
    for key in keys:
        g = complex_step_gradient(name, t, key)
        err = rel(g, t["d" + key] if key == "X" else t["d_" + key])
        print(f"{name}: d{key} {err:.1e}")
        assert err < REL, key
    if CASES[name]["family"] == "boft":  # only the skew part of A matters
        dA = t["d_boft_R"]
        assert np.array_equal(dA, -np.swapaxes(dA, -1, -2))


@pytest.mark.parametrize("name", BOFT)
def test_boft_analytic_backward_matches_peft(name):
    t = case_tensors(name)
    dX, dA, ds = ref.boft_vjp(t["X"], t["W0"], t["boft_R"], t["boft_s"], t["G"])
    for what, mine, peft_grad in (("dX", dX, t["dX"]), ("dA", dA, t["d_boft_R"]),
                                  ("ds", ds, t["d_boft_s"])):
        err = rel(mine, peft_grad)
        print(f"{name}: analytic {what} {err:.1e}")
        assert err < REL, what


def test_negative_controls():
    """Each plausible wrong convention moves Y by far more than REL."""
    name = "boft_i16_o12_bs4_m3_dropout"
    t = case_tensors(name)
    X, W0, bias, A, s = t["X"], t["W0"], t["bias"], t["boft_R"], t["boft_s"]
    factors = ref.boft_factors_dense(A)
    wrong = {
        "R^T blocks": ref.boft_forward(X, W0, bias, np.swapaxes(A, -1, -2), s),
        "no 1/2 in the skew part": ref.boft_forward(X, W0, bias, 2 * A, s),
        "factor 0 applied first": (X @ factors[0] @ factors[1] @ factors[2]) @ W0.T * s.T + bias,
        "W' = W0 M instead of W0 M^T": X @ (s * (W0 @ ref.boft_rotation(A))).T + bias,
        "no output scale": ref.boft_forward(X, W0, bias, A, np.ones_like(s)),
    }
    for what, Y in wrong.items():
        assert rel(Y, t["Y"]) > 1e-2, what
    name = "hra_i16_o12_r3"
    t = case_tensors(name)
    u = t["hra_u"]
    wrong = {
        "reflection 0 first": ref.hra_apply(t["X"], u[:, ::-1], False) @ t["W0"].T + t["bias"],
        "W' = W0 R_H^T": t["X"] @ (t["W0"] @ ref.hra_rotation(u, False).T).T + t["bias"],
        "GS when not asked": ref.hra_forward(t["X"], t["W0"], t["bias"], u, True),
    }
    for what, Y in wrong.items():
        assert rel(Y, t["Y"]) > 1e-2, what


# ---------------------------------------------------------------------------------------------
# HRA

@pytest.mark.parametrize("name", HRA)
def test_hra_rotation(name):
    t = case_tensors(name)
    gs = CASES[name]["derived"]["apply_GS"]
    R = ref.hra_rotation(t["hra_u"], gs)
    d, r = t["hra_u"].shape
    assert np.linalg.norm(R.T @ R - np.eye(d)) < 1e-13
    assert np.isclose(np.linalg.det(R), (-1.0) ** r)  # r reflections
    assert rel(ref.hra_apply(t["X"], t["hra_u"], gs), t["X"] @ R.T) < REL
    # compact WY: R_H = I - Q T Q^T, so X R_H^T = X - ((X Q) T^T) Q^T: two thin products
    Q, Tm = ref.hra_wy(t["hra_u"], gs)
    assert np.array_equal(Tm, np.triu(Tm))
    assert rel(np.eye(d) - Q @ Tm @ Q.T, R) < REL
    assert rel(t["X"] - ((t["X"] @ Q) @ Tm.T) @ Q.T, t["X"] @ R.T) < REL
    if gs:  # with Gram-Schmidt the reflections commute: R = I - 2 Q Q^T, symmetric
        Q = ref.hra_vectors(t["hra_u"], True)
        assert np.linalg.norm(Q.T @ Q - np.eye(r)) < 1e-13
        assert rel(R, np.eye(d) - 2 * Q @ Q.T) < REL


def test_hra_default_init_with_gs_is_not_a_rotation():
    """PEFT's default init repeats each column of hra_u twice (R = I without GS); GS then
    normalizes rounding noise (docs/families.md 2.5). Shown here on such a u."""
    rng = np.random.default_rng(0)
    half = rng.standard_normal((16, 2))
    u = np.repeat(half, 2, axis=1)  # columns 0, 0, 1, 1
    assert np.linalg.norm(ref.hra_rotation(u, False) - np.eye(16)) < 1e-14
    Q = ref.hra_vectors(u, True)
    assert np.linalg.norm(Q.T @ Q - np.eye(4)) > 0.1  # not orthonormal


# ---------------------------------------------------------------------------------------------
# The adapter folders (real PEFT save_pretrained output, float32)

@pytest.mark.parametrize("family", ["boft", "hra"])
def test_adapter_folder(family):
    folder = HERE / "fixtures" / "adapters" / family
    config = json.loads((folder / "adapter_config.json").read_text())
    meta = INFO["adapters"][family]
    assert config["peft_type"] == family.upper() and config["peft_version"] == "0.21.2"
    with safe_open(str(folder / "adapter_model.safetensors"), "np") as f:
        assert f.metadata() == {"format": "pt"}
        adapter = {k: f.get_tensor(k).astype(np.float64) for k in f.keys()}
    prefix = f"adapter_{family}."
    for module in meta["modules"]:
        key = f"base_model.model.{module}."
        W0 = T[prefix + module + ".weight"].astype(np.float64)
        if family == "boft":
            A, s = adapter[key + "boft_R"], adapter[key + "boft_s"]
            m, N, b, _ = A.shape
            assert (m, b) == (config["boft_n_butterfly_factor"], config["boft_block_size"])
            assert N * b == W0.shape[1] and s.shape == (W0.shape[0], 1)
            W = ref.boft_merge(W0, A, s)
        else:
            u = adapter[key + "hra_u"]
            assert u.shape == (W0.shape[1], config["r"])
            W = ref.hra_merge(W0, u, config["apply_GS"])
        # PEFT merged in float32: about d * eps32 = 16 * 6e-8 normwise
        err = rel(W, T[prefix + module + ".merged_weight"].astype(np.float64))
        print(f"adapter {family} {module}: W' {err:.1e} (float32)")
        assert err < 1e-5
    assert sorted(adapter) == sorted(f"base_model.model.{mod}.{p}" for mod in meta["modules"]
                                     for p in (["boft_R", "boft_s"] if family == "boft" else ["hra_u"]))


# ---------------------------------------------------------------------------------------------
# GOFT (no package to check against: the paper's definition, and our choices, section 3)

@pytest.mark.parametrize("d", [2, 3, 6, 8, 13, 16, 32])
def test_goft_pairs_and_count(d):
    stages = ref.givens_pairs(d, "goft")
    assert ref.givens_count(d) == d - 1
    assert len(stages) == int(np.ceil(np.log2(d)))
    for r, pairs in enumerate(stages, start=1):
        touched = pairs.ravel()
        assert len(set(touched)) == len(touched) and touched.max() < d  # disjoint: one pass
        assert np.all(pairs[:, 0] % 2 ** r == 0) and np.all(pairs[:, 1] - pairs[:, 0] == 2 ** (r - 1))
        if d & (d - 1) == 0:
            assert len(pairs) == d // 2 ** r  # the paper's d / 2^r rotations in stage r


@pytest.mark.parametrize("d,layout", [(8, "goft"), (13, "goft"), (32, "goft"),
                                      (8, "butterfly"), (32, "butterfly")])
def test_givens_orthogonal_and_matrix_free(d, layout):
    rng = np.random.default_rng(d)
    theta = rng.uniform(-np.pi, np.pi, ref.givens_count(d, layout))
    R = ref.givens_rotation(d, theta, layout)
    assert np.linalg.norm(R.T @ R - np.eye(d)) < 1e-14 * d
    assert np.isclose(np.linalg.det(R), 1.0)
    X = rng.standard_normal((5, d))
    assert rel(ref.givens_apply(X, theta, layout), X @ R) < REL
    # merge and forward agree
    W0, bias = rng.standard_normal((4, d)), rng.standard_normal(4)
    Y = ref.givens_forward(X, W0, bias, theta, layout)
    assert rel(X @ ref.givens_merge(W0, theta, layout).T + bias, Y) < REL
    assert np.linalg.norm(R - np.eye(d)) > 0.5


def test_goft_sign_and_order_on_a_small_case():
    """d = 4: R = P_2 P_1, P_1 = G(0,1;a) G(2,3;b), P_2 = G(0,2;c); G(i,j;t) e_i = cos t e_i + sin t e_j."""
    a, b, c = 0.3, -0.7, 1.1
    R = ref.givens_rotation(4, np.array([a, b, c]))

    def G(i, j, t):
        g = np.eye(4)
        g[i, i] = g[j, j] = np.cos(t)
        g[i, j], g[j, i] = -np.sin(t), np.sin(t)
        return g
    assert np.allclose(R, G(0, 2, c) @ G(0, 1, a) @ G(2, 3, b), rtol=0, atol=1e-15)
    assert np.allclose(G(0, 1, a) @ np.eye(4)[:, 0], [np.cos(a), np.sin(a), 0, 0])


def test_goft_is_the_butterfly_with_angles_pruned():
    d = 16
    rng = np.random.default_rng(1)
    goft, full = ref.givens_pairs(d, "goft"), ref.givens_pairs(d, "butterfly")
    theta_goft = rng.standard_normal(d - 1)
    theta_full, k = [], 0
    for sg, sf in zip(goft, full):
        chosen = {int(i): n for n, i in enumerate(sg[:, 0])}
        for i in sf[:, 0]:
            theta_full.append(theta_goft[k + chosen[int(i)]] if int(i) in chosen else 0.0)
        k += len(sg)
    R1 = ref.givens_rotation(d, theta_goft, "goft")
    R2 = ref.givens_rotation(d, np.array(theta_full), "butterfly")
    assert rel(R1, R2) < REL


def test_butterfly_givens_is_peft_boft_with_two_by_two_blocks():
    """BOFT with b = 2, m = log2 d is the butterfly layout; its angles from PEFT's own blocks."""
    name = "boft_i32_o8_bs2_m5"
    t = case_tensors(name)
    blocks = ref.boft_cayley(t["boft_R"])  # [m, d/2, 2, 2], factor i pairs at stride 2^i
    assert np.allclose(blocks[..., 0, 0], blocks[..., 1, 1], rtol=0, atol=1e-15)
    theta = np.arctan2(blocks[..., 1, 0], blocks[..., 0, 0]).ravel()  # factor 0 = stage 1 first
    R = ref.givens_rotation(32, theta, "butterfly")
    assert rel(R, t["rotation"]) < REL
