"""Plain-numpy reference of the orthogonal families in docs/families.md: PEFT's BOFT and HRA
Linear layers (eval-mode forward and merge) and GOFT (Givens). Written from the document's
equations, not from PEFT's code; tests/families/test_reference.py checks it against what PEFT
computes (fixtures/families_reference.safetensors).

Orientation (docs/conventions.md): X is [n, d] with one token per row, W0 is [n_out, d], and
every family is written as Y = (X R) W0^T (* s) + bias, i.e. R acts on rows of X from the right
and the merged weight is W0 R^T. Section numbers below are those of docs/families.md.

Every function works for real and complex arrays (no abs, no conjugation, norms as
sqrt(u . u)), so that the test can differentiate it by the complex step.
"""

import numpy as np


# ---------------------------------------------------------------------------------------------
# BOFT (docs/families.md section 1)

def boft_shapes(d, block_size=0, block_num=0, n_butterfly_factor=1):
    """(m, N, b) from PEFT's config fields, with PEFT's validity rules (section 1.1)."""
    if (block_size == 0) == (block_num == 0):
        raise ValueError("give exactly one of block_size and block_num")
    m = n_butterfly_factor
    if m < 1:
        raise ValueError("n_butterfly_factor must be >= 1")
    if block_num:
        if d % block_num:
            raise ValueError(f"block_num {block_num} does not divide d = {d}")
        N, b = block_num, d // block_num
    else:
        if d % block_size:
            raise ValueError(f"block_size {block_size} does not divide d = {d}")
        N, b = d // block_size, block_size
    if m > 1 and (N % 2 ** (m - 1) or b % 2):
        raise ValueError(f"m = {m} needs 2^(m-1) | N (N = {N}) and b even (b = {b})")
    return m, N, b


def boft_perm(d, b, i):
    """pi_i: PEFT's block_butterfly_perm for factor i (0-based) of a layer with m > 1 factors.

    Within each segment of L = b 2^i features, cut into 2^(i+1) chunks of h = b/2: output chunk
    j takes input chunk 2j (j < 2^i) or 2(j - 2^i) + 1 (j >= 2^i). Factor 0 is the identity.
    """
    h, L, half = b // 2, b * 2 ** i, 2 ** i
    k = np.arange(d)
    seg, t = np.divmod(k, L)
    j, o = np.divmod(t, h)
    pos = np.where(j < half, 2 * j, 2 * (j - half) + 1)
    return seg * L + pos * h + o


def boft_block_coords(d, b, i):
    """[N, b] int: coords[g, p] is the feature that row/column p of block g of factor i acts on.

    Block g = seg 2^i + t (t < 2^i) couples the half-block chunk t and chunk t + 2^i of segment
    seg (L = b 2^i features): coords[g, p] = seg L + t h + p for p < h, and
    seg L + (t + 2^i) h + (p - h) for p >= h. It is pi_i^-1(g b + p).
    """
    h, L, half = b // 2, b * 2 ** i, 2 ** i
    g = np.arange(d // b)[:, None]
    p = np.arange(b)[None, :]
    seg, t = np.divmod(g, half)
    return np.where(p < h, seg * L + t * h + p, seg * L + (t + half) * h + (p - h))


def boft_cayley(A):
    """PEFT's block: S = (A - A^T) / 2, R = (I - S)(I + S)^-1, over the last two axes."""
    S = 0.5 * (A - np.swapaxes(A, -1, -2))
    eye = np.broadcast_to(np.eye(A.shape[-1]), A.shape)
    # R (I + S) = I - S  <=>  (I + S)^T R^T = (I - S)^T
    return np.swapaxes(np.linalg.solve(np.swapaxes(eye + S, -1, -2),
                                       np.swapaxes(eye - S, -1, -2)), -1, -2)


def boft_factors_dense(boft_R):
    """[m, d, d]: B_i = P_i D_i P_i^T, P_i[k, pi_i(k)] = 1, D_i = diag(R_{i,0}, ..., R_{i,N-1})."""
    m, N, b, _ = boft_R.shape
    d = N * b
    blocks = boft_cayley(boft_R)
    out = []
    for i in range(m):
        D = np.zeros((d, d), dtype=blocks.dtype)
        for g in range(N):
            D[g * b:(g + 1) * b, g * b:(g + 1) * b] = blocks[i, g]
        P = np.zeros((d, d))
        pi = boft_perm(d, b, i) if m > 1 else np.arange(d)
        P[np.arange(d), pi] = 1.0
        out.append(P @ D @ P.T)
    return np.stack(out)


def boft_rotation(boft_R):
    """M = B_{m-1} ... B_1 B_0 (section 1.3): the d x d matrix PEFT forms."""
    factors = boft_factors_dense(boft_R)
    M = factors[0]
    for i in range(1, len(factors)):
        M = factors[i] @ M
    return M


def boft_apply(X, boft_R):
    """X M without forming M: factor m-1 first; per block, gather the b features, times R."""
    m, N, b, _ = boft_R.shape
    d = N * b
    blocks = boft_cayley(boft_R)
    Y = np.array(X, dtype=np.result_type(X, blocks))
    for i in reversed(range(m)):
        coords = boft_block_coords(d, b, i)
        Y[:, coords] = np.einsum("ngp,gpq->ngq", Y[:, coords], blocks[i])
    return Y


def boft_forward(X, W0, bias, boft_R, boft_s):
    """Y = ((X M) W0^T) * s^T + bias (section 1.4)."""
    Z = boft_apply(X, boft_R) @ W0.T
    Y = Z * boft_s[:, 0][None, :]
    return Y if bias is None else Y + bias[None, :]


def boft_vjp(X, W0, boft_R, boft_s, G):
    """Gradients of L = sum(Y * G) for boft_forward (section 1.4, "Backward"): dX, dA, ds.

    Matrix-free and storing nothing per factor: each factor's input is recovered from its
    output with R^T (the blocks are orthogonal), from X M back to X.
    """
    m, N, b, _ = boft_R.shape
    d = N * b
    S = 0.5 * (boft_R - np.swapaxes(boft_R, -1, -2))
    blocks = boft_cayley(boft_R)
    XM = boft_apply(X, boft_R)
    ds = np.sum(G * (XM @ W0.T), axis=0)[:, None]
    dV = (G * boft_s[:, 0][None, :]) @ W0           # dL/d(X M)
    V = XM
    dA = np.zeros_like(boft_R)
    for i in range(m):                              # factor 0 was applied last
        coords = boft_block_coords(d, b, i)
        Vin = np.einsum("ngq,gpq->ngp", V[:, coords], blocks[i])       # out R^T
        dR = np.einsum("ngp,ngq->gpq", Vin, dV[:, coords])             # in^T dout
        dV[:, coords] = np.einsum("ngq,gpq->ngp", dV[:, coords], blocks[i])
        V[:, coords] = Vin
        inv = np.linalg.inv(np.eye(b) - S[i])                          # (I - S)^-1 = (I + S)^-T
        dS = -2.0 * inv @ dR @ inv
        dA[i] = 0.5 * (dS - np.swapaxes(dS, -1, -2))
    return dV, dA, ds


def boft_merge(W0, boft_R, boft_s):
    """W' = diag(s) W0 M^T (section 1.5)."""
    return boft_s * (W0 @ boft_rotation(boft_R).T)


# ---------------------------------------------------------------------------------------------
# HRA (section 2)

def _column_norms(U):
    return np.sqrt(np.sum(U * U, axis=0))


def hra_vectors(hra_u, apply_GS):
    """The reflection vectors: columns of hra_u normalized, or modified Gram-Schmidt (2.2)."""
    if not apply_GS:
        return hra_u / _column_norms(hra_u)[None, :]
    d, r = hra_u.shape
    Q = np.zeros((d, r), dtype=hra_u.dtype)
    for i in range(r):
        v = hra_u[:, i].copy()
        for j in range(i):  # one pass, each projection on the updated v (modified GS)
            v = v - (Q[:, j] @ v) * Q[:, j]
        Q[:, i] = v / np.sqrt(v @ v)
    return Q


def hra_rotation(hra_u, apply_GS):
    """R_H = H_0 H_1 ... H_{r-1}, H_i = I - 2 q_i q_i^T (2.1); with GS that is I - 2 Q Q^T."""
    Q = hra_vectors(hra_u, apply_GS)
    d, r = Q.shape
    R = np.eye(d, dtype=Q.dtype)
    for i in range(r):
        R = R - 2.0 * np.outer(R @ Q[:, i], Q[:, i])
    return R


def hra_wy(hra_u, apply_GS):
    """Compact WY form (2.3): R_H = H_0 ... H_{r-1} = I - Q T Q^T, T upper triangular r x r.

    T[i, i] = 2 and T[:i, i] = -2 T[:i, :i] (Q[:, :i]^T q_i), column by column (LAPACK's
    larft, forward, with tau = 2). With Gram-Schmidt Q^T Q = I and T = 2 I.
    """
    Q = hra_vectors(hra_u, apply_GS)
    r = Q.shape[1]
    T = np.zeros((r, r), dtype=Q.dtype)
    for i in range(r):
        T[i, i] = 2.0
        T[:i, i] = -2.0 * T[:i, :i] @ (Q[:, :i].T @ Q[:, i])
    return Q, T


def hra_apply(X, hra_u, apply_GS):
    """X R_H^T = X H_{r-1} ... H_0 without forming R_H: reflection r-1 first."""
    Q = hra_vectors(hra_u, apply_GS)
    Y = np.array(X, dtype=np.result_type(X, Q))
    for i in reversed(range(Q.shape[1])):
        Y = Y - 2.0 * np.outer(Y @ Q[:, i], Q[:, i])
    return Y


def hra_forward(X, W0, bias, hra_u, apply_GS):
    """Y = X (W0 R_H)^T + bias = (X R_H^T) W0^T + bias (2.3)."""
    Y = hra_apply(X, hra_u, apply_GS) @ W0.T
    return Y if bias is None else Y + bias[None, :]


def hra_merge(W0, hra_u, apply_GS):
    """W' = W0 R_H (2.4)."""
    return W0 @ hra_rotation(hra_u, apply_GS)


# ---------------------------------------------------------------------------------------------
# GOFT (section 3)

def givens_pairs(d, layout="goft"):
    """The stages of Givens pairs, a list of [n_r, 2] int arrays (i < j), stage 1 first.

    layout "goft" (the paper's Eq. 3, extended to any d as the authors' first code does):
      stage r = 1, 2, ... pairs (2^r k, 2^r k + 2^(r-1)) for every k with 2^r k + 2^(r-1) < d;
      d - 1 rotations over ceil(log2 d) stages.
    layout "butterfly" (our extension, not the paper): stage r pairs (i, i + 2^(r-1)) for every
      i whose bit r-1 is 0; d a power of two, d/2 rotations per stage, (d/2) log2 d in all.
      This is BOFT with b = 2, m = log2 d (docs/families.md 3.3).
    """
    if d < 2:
        raise ValueError("d must be >= 2")
    stages, r = [], 1
    if layout == "goft":
        while 2 ** (r - 1) < d:
            lower = np.arange(0, d - 2 ** (r - 1), 2 ** r)
            stages.append(np.stack([lower, lower + 2 ** (r - 1)], axis=1))
            r += 1
    elif layout == "butterfly":
        if d & (d - 1):
            raise ValueError("the butterfly layout needs d a power of two")
        while 2 ** (r - 1) < d:
            i = np.arange(d)
            lower = i[(i >> (r - 1)) & 1 == 0]
            stages.append(np.stack([lower, lower + 2 ** (r - 1)], axis=1))
            r += 1
    else:
        raise ValueError(f"unknown layout {layout!r}")
    return stages


def givens_count(d, layout="goft"):
    return sum(len(s) for s in givens_pairs(d, layout))


def givens_apply(X, theta, layout="goft"):
    """X R with R = P_L ... P_2 P_1 (section 3.2): stage L first on the rows of X.

    theta is stage-major (stage 1's angles first, in pair order). For one pair (i, j),
    G(i, j; t) has G_ii = G_jj = cos t, G_ij = -sin t, G_ji = sin t (the paper's Eq. 1-2), so a
    row x becomes x_i' = x_i cos t + x_j sin t, x_j' = -x_i sin t + x_j cos t.
    """
    d = X.shape[1]
    stages = givens_pairs(d, layout)
    if len(theta) != sum(len(s) for s in stages):
        raise ValueError(f"theta has {len(theta)} angles, the layout {sum(map(len, stages))}")
    offsets = np.cumsum([0] + [len(s) for s in stages])
    Y = np.array(X, dtype=np.result_type(X, theta, 1.0))
    for r in reversed(range(len(stages))):
        i, j = stages[r][:, 0], stages[r][:, 1]
        c, s = np.cos(theta[offsets[r]:offsets[r + 1]]), np.sin(theta[offsets[r]:offsets[r + 1]])
        xi, xj = Y[:, i].copy(), Y[:, j].copy()
        Y[:, i] = xi * c + xj * s
        Y[:, j] = -xi * s + xj * c
    return Y


def givens_rotation(d, theta, layout="goft"):
    """The dense R = P_L ... P_1, built from the paper's G matrices (not from givens_apply)."""
    stages = givens_pairs(d, layout)
    offsets = np.cumsum([0] + [len(s) for s in stages])
    R = np.eye(d)
    for r, pairs in enumerate(stages):
        P = np.eye(d)
        for (i, j), t in zip(pairs, theta[offsets[r]:offsets[r + 1]]):
            P[i, i] = P[j, j] = np.cos(t)
            P[i, j], P[j, i] = -np.sin(t), np.sin(t)
        R = P @ R
    return R


def givens_forward(X, W0, bias, theta, layout="goft"):
    """Y = (X R) W0^T + bias, i.e. the paper's h = (R W)^T x with W = W0^T (Eq. 4)."""
    Y = givens_apply(X, theta, layout) @ W0.T
    return Y if bias is None else Y + bias[None, :]


def givens_merge(W0, theta, layout="goft"):
    """W' = W0 R^T."""
    return W0 @ givens_rotation(W0.shape[1], theta, layout).T
