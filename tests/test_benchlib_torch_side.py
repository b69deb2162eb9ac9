"""scripts/benchlib/torch_side.py: the blog's loop is torch_ref.train's own (tiny, fake data, CPU)."""

import numpy as np
import torch
from helpers import fake_data

from benchlib import torch_side
from benchlib.settings import quick_settings
from torch_ref import data as torch_data
from torch_ref import train as torch_train


def test_blog_epoch_runs_torch_refs_epoch_and_test_pass(monkeypatch):
    calls = []
    epoch, evaluate = torch_train.train_epoch, torch_train.evaluate
    monkeypatch.setattr(torch_train, "train_epoch", lambda *a, **k: calls.append("epoch") or epoch(*a, **k))
    monkeypatch.setattr(torch_train, "evaluate", lambda *a, **k: calls.append("evaluate") or evaluate(*a, **k))
    result = torch_side.torch_blog_epoch("cnn", 8, fake_data(n=36), quick_settings(train_size=36), "cpu")
    assert calls == ["epoch", "evaluate"]
    assert result["steps"] == 5 and result["images"] == 36  # ceil(36 / 8): the blog keeps the ragged batch
    assert result["test_images"] == 10


def test_blog_step_and_tuned_step(monkeypatch):
    data, settings = fake_data(n=24), quick_settings()
    seen = []
    epoch = torch_train.train_epoch
    monkeypatch.setattr(torch_train, "train_epoch", lambda *a, **k: seen.append(len(a[2])) or epoch(*a, **k))
    blog = torch_side.torch_blog_step("cnn", 8, data, settings, "cpu", peak={}, flops_per_image=None)
    assert set(seen) == {1} and len(seen) == settings.warmup + blog["step"]["n"]  # one batch per timed call
    tuned = torch_side.torch_tuned_step("cnn", 8, data, settings, "cpu", peak={"fp32": 1.0}, flops_per_image=2.6e6)
    assert tuned["mode"] == "eager" and tuned["channels_last"] and tuned["fraction_of_peak"] > 0


def test_device_tensors_are_normalised_channels_last():
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    x, y = torch_side.device_tensors(images, np.array([1, 2, 3]), "cpu")
    assert x.shape == (3, 1, 28, 28) and x.is_contiguous(memory_format=torch.channels_last)
    expected = torch_data.MnistDataset(images, np.array([1, 2, 3]), augment=False)[1][0]
    torch.testing.assert_close(x[1], expected, rtol=0, atol=1e-6)
    assert y.dtype == torch.int64
