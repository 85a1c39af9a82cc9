"""Inputs at the edges that PEFT takes and oft must take the same way: empty batches, read-only
NumPy inputs, rows of stride 0, PEFT's constant R (T <= 1); and refusals that name the argument."""
import copy

import numpy as np
import pytest
import torch
from peft import OFTConfig, get_peft_model

import oft
import oft.peft
import oft.torch as ot


def test_rotate_takes_an_empty_batch_and_gives_a_zero_dtheta():
    theta = (0.1 * torch.randn(4, 120)).requires_grad_()
    x = torch.randn(0, 64, requires_grad=True)
    y = ot.rotate(x, theta, 16)
    assert y.shape == (0, 64)
    y.sum().backward()  # dy: expanded zeros, strides (0, 0)
    assert x.grad.shape == (0, 64)
    assert torch.equal(theta.grad, torch.zeros_like(theta))
    # Leading dimensions with no rows, and PEFT's own layer on it.
    x3 = torch.randn(2, 0, 64, requires_grad=True)
    ot.rotate(x3, theta, 16).sum().backward()
    assert x3.grad.shape == (2, 0, 64)


def test_accelerated_peft_layer_on_an_empty_batch_equals_peft():
    model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(64, 8)),
                           OFTConfig(r=0, oft_block_size=16, target_modules=["0"]))
    fast = copy.deepcopy(model)
    oft.peft.accelerate(fast)
    grads = []
    for m in (model, fast):
        m(torch.randn(0, 64)).sum().backward()
        grads.append(next(p.grad for n, p in m.named_parameters() if "oft_" in n))
    assert grads[0] is not None and torch.equal(grads[0], grads[1])


def test_rotation_on_zero_numpy_rows():
    rot = oft.Rotation(8, 4, dtype="float32")
    rot.set_generators(np.full((2, 6), 0.1, dtype=np.float32))
    x = np.zeros((0, 8), dtype=np.float32)
    y = np.zeros((0, 8), dtype=np.float32)
    rot.apply(x, y)
    dx = np.zeros((0, 8), dtype=np.float32)
    dtheta = np.full((2, 6), 7.0, dtype=np.float32)
    rot.backward(x, x, dx, dtheta)
    assert not dtheta.any()


def test_read_only_numpy_inputs_are_taken():
    rng = np.random.default_rng(0)
    theta = (0.1 * rng.standard_normal((2, 6))).astype(np.float32)
    x = rng.standard_normal((5, 8)).astype(np.float32)
    dy = rng.standard_normal((5, 8)).astype(np.float32)
    results = []
    for writeable in (True, False):
        t, a, g = theta.copy(), x.copy(), dy.copy()
        for arr in (t, a, g):
            arr.flags.writeable = writeable
        rot = oft.Rotation(8, 4, dtype="float32")
        rot.set_generators(t)
        y = np.empty((5, 8), dtype=np.float32)
        rot.apply(a, y)
        dx, dtheta = np.empty((5, 8), np.float32), np.empty((2, 6), np.float32)
        rot.backward(a, g, dx, dtheta)
        results.append((y, dx, dtheta))
    for u, v in zip(*results):
        assert np.array_equal(u, v)


def test_unwritable_or_unreadable_arguments_are_named():
    rot = oft.Rotation(8, 4, dtype="float32")
    x = np.ones((3, 8), dtype=np.float32)
    y = np.empty((3, 8), dtype=np.float32)
    y.flags.writeable = False
    with pytest.raises(ValueError, match=r"y \[3, 8\] is read-only"):
        rot.apply(x, y)
    dtheta = np.empty((2, 6), dtype=np.float32)
    dtheta.flags.writeable = False
    with pytest.raises(ValueError, match=r"dtheta \[2, 6\] is read-only"):
        rot.backward(x, x, None, dtheta)
    with pytest.raises(ValueError, match=r"y \[3, 8\] is on meta"):
        rot.apply(x, torch.empty(3, 8, device="meta"))
    with pytest.raises(ValueError, match=r"x \[3, 8\] is on meta"):
        rot.apply(torch.empty(3, 8, device="meta"), np.empty((3, 8), np.float32))


def test_non_triangular_theta_is_named():
    rot = oft.Rotation(8, 4, dtype="float32")
    with pytest.raises(ValueError, match=r"theta has shape \[2, 5\], expected \[2, 6\]"):
        rot.set_generators(np.zeros((2, 5), dtype=np.float32))


def test_rows_of_stride_zero_are_taken():
    theta = (0.1 * torch.randn(4, 120, dtype=torch.float64)).requires_grad_()
    row = torch.randn(1, 64, dtype=torch.float64)
    x = row.expand(5, 64).requires_grad_()
    assert x.stride(0) == 0
    y = ot.rotate(x, theta, 16)
    ref = ot.rotate(row.expand(5, 64).contiguous(), theta.detach(), 16)
    assert torch.equal(y, ref)
    y.backward(torch.ones(5, 64, dtype=torch.float64).expand(5, 64))
    # And in PEFT's layer, which accepts the same input.
    model = get_peft_model(torch.nn.Sequential(torch.nn.Linear(64, 8)).double(),
                           OFTConfig(r=0, oft_block_size=16, target_modules=["0"]))
    fast = copy.deepcopy(model)
    oft.peft.accelerate(fast)
    assert torch.allclose(model(x), fast(x), rtol=1e-12, atol=1e-12)


def test_rotation_copies_broadcast_input_rows_and_refuses_broadcast_outputs():
    rot = oft.Rotation(64, 16, dtype="float64")
    theta = 0.1 * np.random.default_rng(0).standard_normal((4, 120))
    rot.set_generators(theta)
    row = np.random.default_rng(1).standard_normal((1, 64))
    want = np.empty((5, 64))
    rot.apply(np.repeat(row, 5, axis=0), want)
    for x in (np.broadcast_to(row, (5, 64)), torch.from_numpy(row).expand(5, 64)):
        y = np.empty((5, 64))
        rot.apply(x, y)
        assert np.array_equal(y, want)
        dx, dtheta = np.empty((5, 64)), np.empty((4, 120))
        want_dx, want_dtheta = np.empty((5, 64)), np.empty((4, 120))
        rot.backward(x, x, dx, dtheta)
        dense = np.repeat(row, 5, axis=0)
        rot.backward(dense, dense, want_dx, want_dtheta)
        assert np.array_equal(dx, want_dx) and np.array_equal(dtheta, want_dtheta)
    with pytest.raises(ValueError, match=r"y \[5, 64\]"):
        rot.apply(np.repeat(row, 5, axis=0), torch.zeros(1, 64, dtype=torch.float64).expand(5, 64))


def test_core_names_a_tensor_it_cannot_read():
    # oft._core (under oft.Rotation) says which argument and why, not a C++ std::bad_cast.
    op = oft.Rotation(8, 4)._op
    with pytest.raises(ValueError, match=r"^x \[3, 8\]: a .*Tensor on meta that oft cannot read"):
        op.apply(torch.empty(3, 8, device="meta"), torch.empty(3, 8))
    with pytest.raises(ValueError, match=r"^y \[3, 8\]: a .*Tensor on meta that oft cannot read"):
        op.apply(torch.empty(3, 8), torch.empty(3, 8, device="meta"))


@pytest.mark.parametrize("terms", [0, 1])
def test_constant_r_leaves_weight_grad_none_like_peft(terms):
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(32, 8))
    model = get_peft_model(base, OFTConfig(r=0, oft_block_size=8, target_modules=["0"],
                                           use_cayley_neumann=True,
                                           num_cayley_neumann_terms=terms))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "oft_" in n:
                p.copy_(0.1 * torch.randn_like(p))
    fast = copy.deepcopy(model)
    oft.peft.accelerate(fast)
    x = torch.randn(6, 32, requires_grad=True)  # PEFT's loss has no other path to a leaf
    params = []
    for m in (model, fast):
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2,
                                weight_decay=0.1)
        for _ in range(3):
            opt.zero_grad()
            m(x).square().sum().backward()
            weight = next(p for n, p in m.named_parameters() if "oft_" in n)
            assert weight.grad is None
            opt.step()
        params.append(weight.detach().clone())
    assert torch.equal(params[0], params[1])
