import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

HAS_GPU = torch.cuda.is_available()
if not HAS_GPU:  # Triton kernels run through the interpreter on the CPU; must be set before they are defined
    os.environ.setdefault("TRITON_INTERPRET", "1")

import hf_sdpa  # noqa: E402,F401  registers the names

DEVICE = "cuda" if HAS_GPU else "cpu"


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not HAS_GPU:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_seed():
    torch.manual_seed(torch.initial_seed() % (2 ** 31) + 1)


class Ops(TorchDispatchMode):
    """Records the aten ops one thread dispatches (dispatch modes are thread-local)."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))
