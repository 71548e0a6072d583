"""Shared fixtures: the shared-data location and the opt-in marker for slow experiment runs.

tests/ is put on ``sys.path`` so that every test can ``from helpers import ...`` (the shared image
builders, VLFeat wrappers and fx helpers of ``tests/helpers/``), whatever pytest's import mode.
"""

import sys
from pathlib import Path

import pytest
import torch

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from preimage.data import missing_reason, shared_dir


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run slow experiment tests")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow experiment run: opt in with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared():
    """The shared data folder, or skip the test with a clear reason."""
    root = shared_dir()
    if root is None:
        pytest.skip(missing_reason())
    return root


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """One intra-op torch thread for the test, restored afterwards: on a machine whose cores are
    shared, tiny ops otherwise wait for busy cores at every barrier (a 40-step DIP fit took 50 s
    instead of 2). Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
