import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(2)

from tiny_models import tiny_dit_pipeline, tiny_pixart_pipeline  # noqa: E402


@pytest.fixture(scope="session")
def dit_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-dit")
    tiny_dit_pipeline().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def pixart_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-pixart-alpha")
    tiny_pixart_pipeline().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def pixart_sigma_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-pixart-sigma")
    tiny_pixart_pipeline(sigma=True).save_pretrained(path)
    return path


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def one_thread_for_tiny_models():
    """A module fixture (``one_thread = pytest.fixture(autouse=True, scope="module")(one_thread_for_tiny_models)``):
    these models are tiny, so per-op thread synchronisation dominates, and on a loaded 2-core machine two threads
    make every op wait for a busy core (many times slower). One thread for the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
