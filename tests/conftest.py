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
