"""Shared fixtures: the shared-data location and the opt-in marker for slow experiment runs."""

import pytest
import torch

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
