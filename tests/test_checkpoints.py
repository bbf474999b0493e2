"""Resuming from accelerate checkpoints when the newest one has a damaged file."""

import pytest
import torch
from accelerate import Accelerator

from harmonica.training.checkpoints import CheckpointError, broken_files, resume, save_checkpoint


class Counter:
    """A custom object registered for checkpointing (written as custom_checkpoint_0.pkl)."""

    def __init__(self):
        self.value = 0

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


def training_state():
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    counter = Counter()
    accelerator.register_for_checkpointing(counter)
    return accelerator, model, optimizer, counter


def train_step(model, optimizer, counter):
    model(torch.ones(2, 4)).square().sum().backward()
    optimizer.step()
    optimizer.zero_grad()
    counter.value += 1


@pytest.fixture
def two_checkpoints(tmp_path):
    """checkpoint-1 and checkpoint-2 of a tiny run; returns the folder and the weights at step 1."""
    accelerator, model, optimizer, counter = training_state()
    train_step(model, optimizer, counter)
    save_checkpoint(accelerator, tmp_path, 1)
    at_step_1 = model.weight.detach().clone()
    train_step(model, optimizer, counter)
    save_checkpoint(accelerator, tmp_path, 2)
    assert not torch.equal(model.weight, at_step_1)
    return tmp_path, at_step_1


def damage(path, how):
    data = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:  # one byte flipped in the middle
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(flipped))


FILES = ["model.safetensors", "optimizer.bin", "random_states_0.pkl", "custom_checkpoint_0.pkl"]
CASES = [(f, how) for f in FILES for how in ("empty", "truncated")] + [("optimizer.bin", "flipped")]


def test_the_state_has_the_files_tested(two_checkpoints):
    folder, _ = two_checkpoints
    assert sorted(p.name for p in (folder / "checkpoint-2").iterdir()) == sorted(FILES)
    assert broken_files(folder / "checkpoint-2") == []


@pytest.mark.parametrize("name, how", CASES)
def test_damaged_newest_checkpoint_falls_back_to_the_previous(two_checkpoints, name, how):
    folder, at_step_1 = two_checkpoints
    damage(folder / "checkpoint-2" / name, how)
    size = (folder / "checkpoint-2" / name).stat().st_size
    accelerator, model, optimizer, counter = training_state()
    with pytest.warns(UserWarning, match=rf"checkpoint-2 is damaged \({name}: .*resumed from the previous") as record:
        step = resume(accelerator, folder)
    assert step == 1 and counter.value == 1
    assert torch.equal(model.weight, at_step_1)
    assert "checkpoint-2.broken" in str(record[0].message)
    # kept, not deleted, and out of the way of the next saves (which would overwrite checkpoint-2)
    assert (folder / "checkpoint-2.broken" / name).stat().st_size == size
    assert not (folder / "checkpoint-2").exists()
    train_step(model, optimizer, counter)
    save_checkpoint(accelerator, folder, 2)
    assert (folder / "checkpoint-2.broken" / name).stat().st_size == size
    assert resume(training_state()[0], folder) == 2


def test_no_intact_checkpoint_is_a_clear_error(two_checkpoints):
    folder, _ = two_checkpoints
    damage(folder / "checkpoint-2" / "optimizer.bin", "truncated")
    damage(folder / "checkpoint-1" / "model.safetensors", "empty")
    with pytest.raises(CheckpointError) as err:
        resume(training_state()[0], folder)
    text = str(err.value)
    assert str(folder) in text and "checkpoint-2: optimizer.bin: truncated" in text
    assert "checkpoint-1: model.safetensors: empty file" in text and "move or delete" in text
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-1", "checkpoint-2"]  # nothing renamed


def test_no_checkpoint_starts_at_zero(tmp_path):
    assert resume(training_state()[0], tmp_path / "none") == 0
