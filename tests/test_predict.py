"""jaxmnist.predict: MNIST-like inputs from any image, predictions from a checkpoint or a PyTorch state_dict,
and one line per bad file."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxmnist import predict, weights

N = 200  # test digits checked
pytestmark = pytest.mark.xdist_group("trained_cnn")  # conftest's trained_cnn: one worker trains it once


def disguised(digit: np.ndarray, rng) -> Image.Image:
    """A test digit as a user might photograph it: dark coloured ink on cream paper, 4-6x larger, off-centre."""
    scale = rng.uniform(4, 6)
    ink = Image.fromarray(255 - digit).resize((round(28 * scale),) * 2, Image.Resampling.BICUBIC)
    ink = np.asarray(ink, np.float32) / 255  # 1 = paper, 0 = ink
    paper, colour = np.array([250, 245, 230]), rng.uniform(0, 120, 3)
    rgb = colour + ink[..., None] * (paper - colour)
    canvas = np.tile(paper, (300, 400, 1)).astype(np.float32)
    top, left = rng.integers(0, 300 - rgb.shape[0]), rng.integers(0, 400 - rgb.shape[1])
    canvas[top : top + rgb.shape[0], left : left + rgb.shape[1]] = rgb
    return Image.fromarray(canvas.round().astype(np.uint8))


def test_mnist_digits_stay_as_they_are_and_disguised_ones_come_back(mnist, rng):
    digits = mnist.test_images[:N]
    assert all((predict.to_mnist(Image.fromarray(d)) == d).all() for d in digits)  # 28x28, bright ink: as is

    def alike(a, b):  # the best pixel correlation within a one-pixel shift: thin strokes move by rounding
        a, b = a.astype(float), b.astype(float)
        return max(
            np.corrcoef(np.roll(a, s, (0, 1)).ravel(), b.ravel())[0, 1]
            for s in [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        )

    corr = [alike(predict.to_mnist(disguised(d, rng)), d) for d in digits[:50]]
    assert min(corr) > 0.85, corr  # measured 0.90-0.99 (median 0.98); unshifted, thin digits drop to ~0.5


def test_deep_images_and_a_phones_rotation_give_the_digit_as_8_bits_do(mnist, rng):
    """16-bit, 32-bit and float images keep their ink (PIL's 'L' conversion clipped them at 255), and a JPEG's
    EXIF orientation is applied (a photo stored sideways was read sideways)."""
    import io

    photo = disguised(mnist.test_images[0], rng).convert("L")
    expected = predict.to_mnist(photo)
    levels = np.asarray(photo, np.float64)
    for deep in (Image.fromarray((levels * 257).astype(np.uint16)),  # 'I;16', as a 16-bit PNG opens
                 Image.fromarray((levels * 257).astype(np.int32), mode="I"),
                 Image.fromarray((levels / 255).astype(np.float32), mode="F")):  # fmt: skip
        assert np.abs(predict.to_mnist(deep).astype(int) - expected).max() <= 1, deep.mode
    sideways = photo.transpose(Image.Transpose.ROTATE_90)  # stored turned; the tag says to turn it back
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    buffer = io.BytesIO()
    sideways.save(buffer, "JPEG", quality=95, exif=exif)
    upright = predict.to_mnist(Image.open(io.BytesIO(buffer.getvalue())))
    assert np.corrcoef(upright.ravel(), expected.ravel())[0, 1] > 0.95


@pytest.fixture(scope="session")  # not "module": xdist interleaves modules, tearing those down
def workdir(trained_cnn):
    return trained_cnn


def test_pngs_give_the_evaluations_classes_and_disguised_digits_are_recognised(mnist, workdir, tmp_path, rng, capsys):
    model = weights.from_workdir(str(workdir))
    digits, labels = mnist.test_images[:N], mnist.test_labels[:N]
    evaluated = model.probabilities(digits).argmax(1)
    paths = []
    for i, d in enumerate(digits):
        Image.fromarray(d).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    capsys.readouterr()
    assert predict.main([*paths, "--workdir", str(workdir), "--json", "--top", "1"]) == 0
    found = [p["top"][0]["class"] for p in json.loads(capsys.readouterr().out)["predictions"]]
    assert found == evaluated.tolist()
    right = evaluated == labels
    seen = np.stack([predict.to_mnist(disguised(d, rng)) for d in digits[right]])
    rate = float(np.mean(model.probabilities(seen).argmax(1) == labels[right]))
    print(f"disguised digits recognised: {rate:.3f}")
    assert rate >= 0.9, rate  # measured 0.975 (N = 200, 2-epoch cnn at ~97 %): of the digits it gets right as given


def test_json_output_and_one_line_per_bad_file(mnist, workdir, tmp_path, capsys):
    np.save(tmp_path / "three.npy", mnist.test_images[:3])
    np.save(tmp_path / "floats.npy", mnist.test_images[:1] / 255.0)
    np.save(tmp_path / "wrong.npy", np.zeros((2, 32, 32), np.uint8))
    np.save(tmp_path / "loud.npy", np.full((28, 28), 3.0))
    np.save(tmp_path / "complex.npy", np.zeros((28, 28), np.complex64))  # numpy's cast would drop a part
    (tmp_path / "junk.png").write_bytes(b"not an image")
    names = ("three.npy", "floats.npy", "wrong.npy", "loud.npy", "complex.npy", "junk.png", "nope.png")
    unreadable = ["/proc/self/mem"] if Path("/proc/self/mem").is_file() else []  # Linux: reading it fails (EIO)
    files = [tmp_path / n for n in names] + unreadable
    capsys.readouterr()
    assert predict.main([*map(str, files), "--workdir", str(workdir), "--json"]) == 1
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert [p["file"].rsplit("/", 1)[1] for p in doc["predictions"]] == [
        "three.npy[0]", "three.npy[1]", "three.npy[2]", "floats.npy"
    ]  # fmt: skip
    assert [p["top"][0]["class"] for p in doc["predictions"]][:3] == mnist.test_labels[:3].tolist()
    assert len(doc["predictions"][0]["top"]) == 3 and doc["model"] == "cnn"
    assert err.splitlines() == [
        f"error: {tmp_path}/wrong.npy: expected [28, 28] or [N, 28, 28] digits, got shape [2, 32, 32]",
        f"error: {tmp_path}/loud.npy: float64 digits must be in [0, 1] (uint8 ones in 0-255)",
        f"error: {tmp_path}/complex.npy: expected uint8 digits (0-255) or floats in [0, 1], got complex64",
        f"error: {tmp_path}/junk.png: not an image PIL can read (UnidentifiedImageError)",
        f"error: {tmp_path}/nope.png: no such file",
    ] + [f"error: {u}: cannot read it (Input/output error)" for u in unreadable]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["x.png"], "give --workdir or --torch-state-dict (with --model)"),
        (["x.png", "--torch-state-dict", "m.pth"], "--torch-state-dict needs --model"),
        (["x.png", "--workdir", "/nonexistent/ckpt"], "--workdir /nonexistent/ckpt: no such directory"),
        (["x.png", "--workdir", "w", "--top", "0"], "--top must be >= 1, got 0"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(argv, message, capsys):
    assert predict.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {message}"), err


def test_a_torch_state_dict_predicts_what_torch_does(mnist, tmp_path):
    torch = pytest.importorskip("torch")
    from torch_ref import models as torch_models

    torch.manual_seed(0)
    net = torch_models.get_model("cnn").eval()
    torch.save(net.state_dict(), tmp_path / "cnn.pth")
    model = weights.from_torch(str(tmp_path / "cnn.pth"), "cnn")
    digits = mnist.test_images[:16]
    with torch.no_grad():
        x = (torch.from_numpy(digits.copy()).float()[:, None] / 255 - 0.1307) / 0.3081  # ToTensor, Normalize
        expected = torch.softmax(net(x), -1).numpy()
    np.testing.assert_allclose(model.probabilities(digits), expected, atol=1e-5)
    with pytest.raises(predict.UsageError, match="is not a resnet"):
        weights.from_torch(str(tmp_path / "cnn.pth"), "resnet")


def test_reading_a_workdir_writes_nothing_and_refuses_a_damaged_step(workdir, tmp_path):
    import shutil

    copy = tmp_path / "ckpt"
    shutil.copytree(workdir, copy)
    before = sorted(p.relative_to(copy) for p in copy.rglob("*"))
    assert weights.from_workdir(str(copy), "latest").name == "cnn"
    newest = max((copy / "best").iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else -1)
    next(f for f in newest.rglob("*") if f.is_file() and f.stat().st_size > 100).write_bytes(b"garbage")
    with pytest.raises(predict.UsageError, match=f"the best checkpoint in {copy} .* is damaged"):
        weights.from_workdir(str(copy))
    assert weights.from_workdir(str(copy), "latest").name == "cnn"  # the other kind still reads
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == before  # nothing moved, nothing written
