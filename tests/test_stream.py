"""The streaming path (data.stream): inputs stay on disk, memory-mapped, and DataLoader workers
read batches; it must compute exactly what the in-memory fast path computes."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from deepstep.config import load_config
from deepstep.data.arrays import StreamData
from deepstep.engine.runtime import Runtime
from deepstep.errors import UserError
from deepstep.registry import TASKS
from deepstep.run import train


@pytest.fixture
def npy_folder(tmp_path):
    d = load_digits()
    folder = tmp_path / "digits-npy"
    folder.mkdir()
    np.save(folder / "x.npy", (d.images[:600] / 16.0).astype(np.float32)[:, None])
    np.save(folder / "y.npy", d.target[:600].astype(np.int64))
    return folder


def _cfg(folder, *extra):
    return load_config("digits-mlp", [f"data.path='{folder}'", "data.name=npz", "train.epochs=2",
                                      "train.threads=1", *extra])


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_run_equals_in_memory_run(npy_folder, tmp_path, workers):
    memory = train(_cfg(npy_folder), tmp_path / "mem", verbose=0).summary
    streamed = train(_cfg(npy_folder, "data.stream=true", f"data.workers={workers}"), tmp_path / "st", verbose=0).summary
    for key in ("test/acc", "test/loss", "val/acc", "val/loss"):
        assert streamed[key] == pytest.approx(memory[key], abs=1e-5), key
    assert memory["test/acc"] > 0.8  # it did learn something


def test_streamed_inputs_stay_memory_mapped(npy_folder):
    cfg = _cfg(npy_folder, "data.stream=true", "data.workers=0")
    task = TASKS.get("classify")(cfg, Runtime(device="cpu"))
    part = task.data["train"]
    assert isinstance(part, StreamData) and isinstance(part.source, np.memmap)
    x, y = next(iter(part.batches(16, seed=0)))
    assert x.shape == (16, 1, 8, 8) and y.shape == (16,)
    assert abs(float(x.mean())) < 1.0  # normalized with the training statistics


def test_streamed_channels_last_images_are_refused(tmp_path):
    folder = tmp_path / "hwc"
    folder.mkdir()
    np.save(folder / "x.npy", np.zeros((10, 8, 8, 3), dtype=np.uint8))
    np.save(folder / "y.npy", np.arange(10) % 2)
    with pytest.raises(UserError, match="channels-first"):
        TASKS.get("classify")(_cfg(folder, "data.stream=true"), Runtime(device="cpu"))


def test_streamed_images_are_not_resized_silently(npy_folder):
    with pytest.raises(UserError, match="streamed images .* are read from disk as they are"):
        TASKS.get("classify")(_cfg(npy_folder, "data.stream=true", "data.image_size=4"), Runtime(device="cpu"))
    task = TASKS.get("classify")(_cfg(npy_folder, "data.stream=true", "data.image_size=8", "data.workers=0"),
                                 Runtime(device="cpu"))  # already that size: fine
    assert next(iter(task.data["train"].batches(4, seed=0)))[0].shape == (4, 1, 8, 8)


def test_streamed_alternating_flips_equal_in_memory_ones(npy_folder, tmp_path):
    # the streamed batches carry the same positions as the in-memory ones, so the same images are mirrored
    memory = train(_cfg(npy_folder, "data.augment=altflip"), tmp_path / "mem", verbose=0).summary
    streamed = train(_cfg(npy_folder, "data.augment=altflip", "data.stream=true", "data.workers=0"), tmp_path / "st",
                     verbose=0).summary
    flipped = train(_cfg(npy_folder, "data.augment=flip"), tmp_path / "flip", verbose=0).summary
    for key in ("test/acc", "test/loss", "val/loss"):
        assert streamed[key] == pytest.approx(memory[key], abs=1e-5), key
    assert flipped["val/loss"] != pytest.approx(memory["val/loss"], abs=1e-5)  # the flips did differ
