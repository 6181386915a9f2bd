"""Fixtures shared by the experiments' tests."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One OpenMP thread for the module: two threads on two busy cores are many times slower
    than one for the tiny models these tests train."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
