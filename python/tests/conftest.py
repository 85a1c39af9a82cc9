import os

import pytest
import torch

# Deterministic, small thread counts: the machine has 2 cores and the DDP test runs 2 processes.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
