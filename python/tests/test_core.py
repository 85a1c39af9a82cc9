"""oft.Rotation (the nanobind module) over NumPy arrays and torch tensors, without autograd."""
import os

import numpy as np
import pytest
import torch

import oft


def dense_r(rot, dtype):
    b, r = rot.block_size, rot.blocks
    blocks = np.empty((r * b, b), dtype=dtype)
    rot.rotation_blocks(blocks)
    out = np.zeros((r * b, r * b), dtype=dtype)
    for i in range(r):
        out[i * b:(i + 1) * b, i * b:(i + 1) * b] = blocks[i * b:(i + 1) * b]
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("policy", ["cayley()", "cayley_neumann(3)", "peft_neumann(5)",
                                    "exponential()"])
def test_apply_matches_dense_product_numpy(dtype, policy):
    rng = np.random.default_rng(1)
    rot = oft.Rotation(12, 4, policy=eval("oft.Policy." + policy), dtype=dtype)
    theta = (0.2 * rng.standard_normal((3, 6))).astype(dtype)
    rot.set_generators(theta)
    x = rng.standard_normal((5, 12)).astype(dtype)
    y = np.empty_like(x)
    rot.apply(x, y)
    r = dense_r(rot, dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(y, x @ r, atol=tol, rtol=tol)
    # R^T undoes an exactly orthogonal R; the true inverse undoes any R.
    back = np.empty_like(x)
    rot.apply_inverse(y, back)
    np.testing.assert_allclose(back, x, atol=10 * tol, rtol=10 * tol)
    rot.apply(x, x)  # in place
    np.testing.assert_array_equal(x, y)


def test_strided_rows_are_taken_without_copy():
    rot = oft.Rotation(8, 4, dtype="float64")
    rot.set_generators(torch.full((2, 6), 0.1, dtype=torch.float64))
    wide = torch.randn(6, 11, dtype=torch.float64)
    x = wide[:, 2:10]  # row stride 11 > width 8
    y_wide = torch.zeros(6, 11, dtype=torch.float64)
    rot.apply(x, y_wide[:, 1:9])
    y = torch.empty(6, 8, dtype=torch.float64)
    rot.apply(x.contiguous(), y)
    assert torch.equal(y_wide[:, 1:9], y)
    assert torch.count_nonzero(y_wide[:, 0]) == 0 and torch.count_nonzero(y_wide[:, 9:]) == 0


def test_backward_matches_autograd_of_dense_product():
    rot = oft.Rotation(8, 4, policy=oft.Policy.cayley_neumann(3), dtype=torch.float64)
    theta = 0.3 * torch.randn(2, 6, dtype=torch.float64)
    rot.set_generators(theta)
    x = torch.randn(7, 8, dtype=torch.float64)
    dy = torch.randn(7, 8, dtype=torch.float64)
    dx = torch.empty_like(x)
    dtheta = torch.empty_like(theta)
    rot.backward(x, dy, dx, dtheta)
    r = torch.from_numpy(dense_r(rot, np.float64))
    torch.testing.assert_close(dx, dy @ r.T, rtol=1e-13, atol=1e-13)
    only_theta = torch.empty_like(theta)
    rot.backward(x, dy, None, only_theta)
    assert torch.equal(only_theta, dtheta)


def test_bad_input_names_the_argument():
    rot = oft.Rotation(8, 4, dtype="float32")
    x = torch.randn(3, 8)
    with pytest.raises(TypeError, match=r"x \[3, 8\] is float64, expected float32"):
        rot.apply(x.double(), torch.empty(3, 8))
    with pytest.raises(TypeError, match=r"theta \[2, 6\] is int64"):
        rot.set_generators(torch.zeros(2, 6, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"theta .*\[3, 6\]|3x6"):
        rot.set_generators(torch.zeros(3, 6))
    with pytest.raises(ValueError, match=r"x has shape \[24\], expected a 2-D array"):
        rot.apply(torch.randn(24), torch.empty(3, 8))
    with pytest.raises(ValueError, match=r"x \[8, 3\] has strides \[1, 8\]"):
        rot.apply(torch.randn(3, 8).t(), torch.empty(8, 3))
    with pytest.raises(ValueError, match=r"X has 3 columns, expected d=8"):
        rot.apply(torch.randn(8, 3), torch.empty(8, 3))
    with pytest.raises(ValueError, match=r"requires grad"):
        rot.apply(x, torch.empty(3, 8, requires_grad=True))
    with pytest.raises(ValueError, match=r"non-finite"):
        rot.set_generators(torch.full((2, 6), float("nan")))
    with pytest.raises(ValueError, match=r"feature size d=8 is not divisible by block size b=3"):
        oft.Rotation(8, 3)
    with pytest.raises(TypeError, match=r"not float32 or float64"):
        oft.Rotation(8, 4, dtype="float16")
    with pytest.raises(ValueError, match=r"num_cayley_neumann_terms"):
        oft.Policy.peft_neumann(-1)
    with pytest.raises(ValueError, match="partial|overlap"):
        buf = torch.randn(4, 9)
        rot.apply(buf[:, :8], buf[:, 1:9])


def test_policies_print_their_settings():
    assert repr(oft.Policy.peft_neumann(5)) == "Parameterization.peft_neumann(num_terms=5)"
    assert repr(oft.Policy.cayley_neumann(2)) == "Parameterization.cayley_neumann(k=2)"
    assert oft.Policy.cayley().name == "cayley"
    assert "peft_neumann" in repr(oft.Rotation(8, 4, policy=oft.Policy.peft_neumann(5)))


def rss_kib():
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def test_many_calls_keep_rss_flat():
    import oft.torch as ot
    x = torch.randn(64, 256, requires_grad=True)
    theta = (0.1 * torch.randn(8, 496)).requires_grad_()

    def step():
        y = ot.rotate(x, theta, 32)
        y.square().sum().backward()
        rot = oft.Rotation(256, 32)
        rot.set_generators(theta.detach())
        rot.apply(x.detach(), torch.empty(64, 256))

    for _ in range(200):  # warm up the allocators
        step()
    before = rss_kib()
    for _ in range(2000):
        step()
    grown = rss_kib() - before
    # One leaked [64, 256] float32 per call would be 2000 * 64 KiB = 125 MiB.
    assert grown < 4096, f"RSS grew by {grown} KiB over 2000 forward+backward calls"
