"""Data-parallel training through torch.distributed (gloo, 2 processes, DistributedDataParallel)
equals one process on the concatenated batch."""
import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import oft
import oft.torch as ot

STEPS, BATCH, D, B = 4, 12, 64, 16


def make_model():
    torch.manual_seed(7)
    model = torch.nn.Sequential(ot.OFTRotation(D, B, dtype=torch.float64),
                                torch.nn.Linear(D, 8, dtype=torch.float64))
    model[1].requires_grad_(False)  # the frozen base
    return model


def data():
    g = torch.Generator().manual_seed(11)
    return (torch.randn(STEPS, 2 * BATCH, D, dtype=torch.float64, generator=g),
            torch.randn(STEPS, 2 * BATCH, 8, dtype=torch.float64, generator=g))


def train(model, xs, ys):
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for x, y in zip(xs, ys):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()


def worker(rank, world, init_file, out_file):
    torch.set_num_threads(1)
    oft.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = torch.nn.parallel.DistributedDataParallel(make_model())
        xs, ys = data()
        part = slice(rank * BATCH, (rank + 1) * BATCH)
        train(model, xs[:, part], ys[:, part])
        if rank == 0:
            torch.save(model.module[0].weight.detach(), out_file)
    finally:
        dist.destroy_process_group()
    # Success: leave without interpreter finalization. In torch 2.15 a gloo worker thread can
    # still be destroying the last collective's AsyncWork when the process exits; its
    # ThreadLocalState holds a Python object, the destructor takes the GIL during Py_Finalize,
    # CPython ends that thread with pthread_exit, and the forced unwind through the noexcept
    # destructor calls std::terminate (SIGABRT in a few percent of runs, without oft too:
    # gloo_exit_abort.py and docs/python.md).
    # Failures above still raise, and mp.spawn reports them with their traceback.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo")
def test_ddp_two_processes_equals_one_process(tmp_path):
    out_file = str(tmp_path / "theta.pt")
    mp.spawn(worker, args=(2, str(tmp_path / "init"), out_file), nprocs=2, join=True)
    distributed = torch.load(out_file)
    single = make_model()
    xs, ys = data()
    train(single, xs, ys)
    expected = single[0].weight.detach()
    assert torch.count_nonzero(expected) > 0
    error = (distributed - expected).abs().max().item()
    print(f"DDP (2 x {BATCH}) vs one process ({2 * BATCH}): max |theta difference| = {error:.3g} "
          f"after {STEPS} steps, |theta|max = {expected.abs().max().item():.3g}")
    assert error <= 1e-13
