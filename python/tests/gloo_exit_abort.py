"""Reproduces a torch defect that made test_distributed.py flaky, with no oft in the process.

Two gloo processes (mp.spawn, file:// rendezvous) train a plain two-layer float64 model with
DistributedDataParallel for 4 steps, then destroy the process group and return. In a few percent
to ~10% of runs one process dies with SIGABRT at exit ("terminate called without an active
exception"). The core dump shows the cause: a ProcessGroupGloo worker thread is still destroying
the last collective's AsyncWork while the main thread is in Py_Finalize; the work's
ThreadLocalState holds a Python object, its destructor asks for the GIL, CPython ends that thread
with pthread_exit, and the forced unwind through a noexcept destructor calls std::terminate.

Measured on 2026-11-27 with torch 2.15.0 (PyPI): 9 of 80 runs aborted. test_distributed.py now
leaves its workers with os._exit(0) after a successful return, which skips Py_Finalize.

Run:  python python/tests/gloo_exit_abort.py [runs]   (not collected by pytest)
"""
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def worker(rank, world, init_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(7)
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Sequential(
            torch.nn.Linear(64, 64, dtype=torch.float64),
            torch.nn.Linear(64, 8, dtype=torch.float64)))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        g = torch.Generator().manual_seed(11)
        for _ in range(4):
            optimizer.zero_grad()
            x = torch.randn(12, 64, dtype=torch.float64, generator=g)
            target = torch.zeros(12, 8, dtype=torch.float64)
            torch.nn.functional.mse_loss(model(x), target).backward()
            optimizer.step()
    finally:
        dist.destroy_process_group()


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    failures = 0
    for i in range(runs):
        with tempfile.TemporaryDirectory() as folder:
            try:
                mp.spawn(worker, args=(2, folder + "/init"), nprocs=2, join=True)
            except mp.ProcessExitedException as e:
                failures += 1
                print(f"run {i}: {e}", flush=True)
    print(f"{failures} of {runs} runs aborted at exit (torch {torch.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
