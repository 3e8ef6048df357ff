"""Shared pytest fixtures."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """torch on one CPU thread for the test (deterministic, fair on a 2-core machine); restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
