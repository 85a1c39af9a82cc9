"""The CPU operator cache of oft.backends.cpu: per thread, per theta, bounded; R reused by the
backward only while theta is unchanged."""
import threading

import torch

import oft.torch as ot
from oft.backends import cpu


def reference(x, theta, dy, b):
    x = x.detach().clone().requires_grad_()
    theta = theta.detach().clone().requires_grad_()
    ot.rotate(x, theta, b).backward(dy)
    return x.grad, theta.grad


def test_layers_of_one_shape_keep_their_own_r():
    d, b = 64, 16
    thetas = [(0.2 * torch.randn(4, 120, dtype=torch.float64)).requires_grad_() for _ in range(3)]
    xs = [torch.randn(7, d, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    dys = [torch.randn(7, d, dtype=torch.float64) for _ in range(3)]
    ys = [ot.rotate(x, t, b) for x, t in zip(xs, thetas)]  # forwards, then backwards reversed
    torch.autograd.backward(ys[::-1], dys[::-1])
    for x, t, dy in zip(xs, thetas, dys):
        dx, dtheta = reference(x, t, dy, b)
        assert torch.equal(x.grad, dx) and torch.equal(t.grad, dtheta)


def test_theta_changed_between_steps_is_used():
    d, b = 32, 8
    theta = (0.2 * torch.randn(4, 28)).requires_grad_()
    x, dy = torch.randn(5, d), torch.randn(5, d)
    for _ in range(3):
        y = ot.rotate(x, theta, b)
        y.backward(dy)
        _, expected = reference(x, theta, dy, b)
        assert torch.equal(theta.grad, expected)
        with torch.no_grad():
            theta.data.add_(0.05)  # through .data: no version bump; the forward recomputes R
        theta.grad = None


def test_cache_is_bounded():
    cache = cpu._cache()
    for _ in range(cpu.CACHE_SIZE + 20):
        theta = 0.1 * torch.randn(2, 6)
        ot.rotate(torch.randn(3, 8), theta, 4)
    assert len(cache) <= cpu.CACHE_SIZE and cache.bytes <= cpu.CACHE_BYTES


def test_threads_have_their_own_operators():
    d, b = 128, 32
    thetas = [0.1 * torch.randn(4, 496) for _ in range(4)]
    xs = [torch.randn(33, d) for _ in range(4)]
    expected = [ot.rotate(x, t, b) for x, t in zip(xs, thetas)]
    results, errors = [None] * 4, []

    def work(i):
        try:
            for _ in range(50):
                results[i] = ot.rotate(xs[i], thetas[i], b)
                assert torch.equal(results[i], expected[i])
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
