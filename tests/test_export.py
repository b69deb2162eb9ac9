"""Weights across frameworks from the command line: jaxmnist.export writes a state_dict the blog's classes load
strictly with the JAX model's logits; jaxmnist.train --init-from starts from torch's weights (jaxmnist.interop)."""

import dataclasses

import jax
import numpy as np
import pytest

from jaxmnist import export, interop, train, trainer, weights
from jaxmnist.cli import UsageError
from jaxmnist.presets import Config

torch = pytest.importorskip("torch")
from torch_ref import models as torch_models  # noqa: E402


def torch_logits(net, digits):
    with torch.no_grad():
        x = (torch.from_numpy(digits.copy()).float()[:, None] / 255 - 0.1307) / 0.3081  # ToTensor, Normalize
        return net.eval()(torch_models.prepare_input(type(net).__name__, x)).numpy()


def jax_logits(model: weights.Model, digits):
    return np.log(model.probabilities(digits))  # log-softmax: logits up to a constant per row


@pytest.mark.parametrize(  # no BatchNorm (conftest's trained cnn), and BatchNorm with running statistics (its
    # FAST_TINY run, whose weight average is what export writes, as evaluation reads it)
    "run", [pytest.param("trained_cnn_run", marks=pytest.mark.xdist_group("trained_cnn")),
            pytest.param("fast_tiny_run", marks=pytest.mark.xdist_group("fast_tiny"))]  # fmt: skip
)
def test_export_loads_strictly_into_torch_ref_with_the_same_logits(run, mnist, tmp_path, capsys, request):
    root, result = request.getfixturevalue(run)
    assert export.main(["--workdir", str(root / "ckpt"), "--to", str(tmp_path / "net.pth")]) == 0
    assert "load it with torch_ref.models.get_model" in capsys.readouterr().out
    net = torch_models.get_model(result.record["config"]["model"])
    net.load_state_dict(torch.load(tmp_path / "net.pth", weights_only=True), strict=True)
    digits = mnist.test_images[:32]
    theirs = torch_logits(net, digits)
    ours = jax_logits(weights.from_workdir(str(root / "ckpt")), digits)
    # Tolerance 1e-4 on log-probabilities: float32 convolutions in two libraries.
    np.testing.assert_allclose(ours, theirs - np.log(np.exp(theirs).sum(1, keepdims=True)), atol=1e-4)
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically


def test_init_from_starts_from_torchs_weights(mnist, tmp_path):
    torch.manual_seed(3)
    net = torch_models.get_model("cnn")
    torch.save(net.state_dict(), tmp_path / "cnn.pth")
    variables = interop.load_torch(tmp_path / "cnn.pth", "cnn")
    digits = mnist.test_images[:32]
    theirs = torch_logits(net, digits)
    np.testing.assert_allclose(
        jax_logits(weights.Model("cnn", variables, "torch"), digits),
        theirs - np.log(np.exp(theirs).sum(1, keepdims=True)),
        atol=1e-4,
    )
    # A run started from them, at a learning rate too small to move them: its parameters are torch's (its
    # BatchNorm statistics have moved: two training steps).
    config = Config(model="cnn", batch_size=64, lr=1e-12, epochs=1, max_steps=2)
    data = dataclasses.replace(mnist, test_images=mnist.test_images[:500], test_labels=mnist.test_labels[:500])
    run = trainer.train_and_evaluate(config, data=data, init=variables, progress=False, chunk_steps=1)
    for ours, theirs_ in zip(jax.tree.leaves(run.state.params), jax.tree.leaves(variables["params"])):
        np.testing.assert_allclose(np.asarray(ours), theirs_, atol=1e-9)
    cli = ["--model", "cnn", "--init-from", str(tmp_path / "cnn.pth"), "--train-size", "640", "--epochs", "1"]
    cli += ["--batch-size", "64", "--max-steps", "2", "--chunk-steps", "1", "--no-report"]  # the tiny runs' program
    assert train.main([*cli, "--no-progress", "--logdir", str(tmp_path / "log")]) == 0  # the flag, end to end


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "cnn", "--torch-state-dict", "/nonexistent.pth"], "cannot read --torch-state-dict /nonexistent.pth"),
        (["--model", "resnet", "--init-from", "CNN_PTH"],
         "--torch-state-dict CNN_PTH is not a resnet state_dict: it is cnn's (--model cnn)"),
    ],
)
def test_bad_init_from_is_one_line(argv, message, tmp_path, capsys):
    torch.save(torch_models.get_model("cnn").state_dict(), tmp_path / "cnn.pth")
    argv = [a.replace("CNN_PTH", str(tmp_path / "cnn.pth")) for a in argv]
    assert train.main([*argv, "--logdir", str(tmp_path / "log")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: " + message.replace("CNN_PTH", str(tmp_path / "cnn.pth")))


def test_export_refuses_a_workdir_without_checkpoints(tmp_path, capsys):
    assert export.main(["--workdir", str(tmp_path), "--to", str(tmp_path / "x.pth")]) == 2
    assert capsys.readouterr().err.startswith(f"error: no best checkpoint in {tmp_path}")


def test_a_pth_that_cannot_be_written_is_one_error_naming_it(tmp_path):
    """A parent that is a file fails the write and its clean-up alike: the write is what is reported."""
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match=r"^cannot write .*/file/cnn\.pth: Not a directory$"):
        interop.write_pth(tmp_path / "file" / "cnn.pth", {"w": np.zeros(3, np.float32)})


def test_the_jax_library_imports_no_torch(tmp_path):
    import subprocess
    import sys

    torch.manual_seed(0)
    net = torch_models.get_model("fast")
    torch.save(net.state_dict(), tmp_path / "fast.pth")
    code = (
        "import sys, jaxmnist.train, jaxmnist.predict, jaxmnist.export; from jaxmnist import runlog; "
        f"runlog.summary_writer({str(tmp_path / 'events')!r}).close(); "  # tensorboardX would import torch
        "print('torch' in sys.modules); "
        "sys.modules['torch'] = None; from jaxmnist import interop; "  # any import of torch now fails
        f"v = interop.load_torch({str(tmp_path / 'fast.pth')!r}, 'fast'); "
        f"interop.save_torch({str(tmp_path / 'back.pth')!r}, 'fast', v)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False" and out.returncode == 0, out.stderr[-500:]  # .pth without torch
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    for key, tensor in net.state_dict().items():  # the round trip without torch is exact
        assert torch.equal(back[key], tensor), key
