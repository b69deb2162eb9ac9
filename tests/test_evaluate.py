"""jaxmnist.evaluate: the report's numbers agree with each other and with training's evaluation; its images;
the CLI on a checkpoint and on a PyTorch state_dict."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from jaxmnist import evaluate, host, train


def test_summary_counts_every_example_once():
    labels = np.array([0, 0, 1, 1, 1, 2])
    probs = np.eye(3)[[0, 1, 1, 1, 0, 2]] * 0.7 + 0.1  # predicted 0, 1, 1, 1, 0, 2; confidence 0.8
    probs[1] = [0.05, 0.9, 0.05]  # the most confident mistake
    s = evaluate.summarise(probs, labels)
    assert s["confusion"] == [[1, 1, 0], [1, 2, 0], [0, 0, 1]]
    assert s["accuracy"] == pytest.approx(100 * 4 / 6)
    assert [(c["support"], c["precision"], c["recall"]) for c in s["per_class"]] == [
        (2, 0.5, 0.5), (3, 2 / 3, 2 / 3), (1, 1.0, 1.0)
    ]  # fmt: skip
    assert [(m["index"], m["true"], m["predicted"]) for m in s["misclassified"]] == [(1, 0, 1), (4, 1, 0)]
    assert "accuracy: 66.67 % (4 of 6)" in evaluate.table(s)


def test_a_wide_head_is_reported_over_the_labels_classes(tmp_path):
    """torchvision's resnet18/101 keep 1000 outputs: their report is over the ten digits, every prediction beyond
    them one column, 'other' (a 1000 x 1000 matrix took minutes to draw: resnet18's end-of-run report, 2026-12-04),
    and the figures draw as a ten-class head's do."""
    labels = np.arange(10).repeat(3)
    probs = np.full((30, 1000), 1e-4)
    probs[np.arange(30), labels] = 0.5
    probs[[0, 1], [500, 999]] = 0.9  # two digits 0 taken for outputs no digit has
    probs[2, 7] = 0.9  # and one for a 7
    s = evaluate.summarise(probs, labels)
    confusion = np.asarray(s["confusion"])
    assert confusion.shape == (10, 11) and confusion[0].tolist() == [0] * 7 + [1, 0, 0, 2]
    assert confusion.sum() == 30 and s["accuracy"] == pytest.approx(100 * 27 / 30) and len(s["per_class"]) == 10
    assert [m["predicted"] for m in s["misclassified"]] == [500, 999, 7]  # listed as predicted
    assert "    0        3" in evaluate.table(s) and "other (2)" in evaluate.table(s)
    out = evaluate.write(s, np.zeros((30, 28, 28), np.uint8), tmp_path)
    assert (out / "confusion.png").exists() and (out / "report.json").stat().st_size < 20_000
    square = evaluate.summarise(probs[:, :10], labels)  # a ten-class head: the square matrix, as ever
    assert np.asarray(square["confusion"]).shape == (10, 10)


@pytest.mark.xdist_group("trained_cnn")  # conftest's trained_cnn_run: one worker trains it once
def test_the_end_of_run_report_agrees_with_training(mnist, trained_cnn_run):
    root, result = trained_cnn_run
    report = json.loads((root / "log" / "report.json").read_text())
    confusion = np.array(report["confusion"])
    # The same weights as the last epoch's test pass: the same accuracy (to 1e-3 points, float32 rounding).
    assert report["accuracy"] == pytest.approx(result.record["final_acc"], abs=1e-3)
    assert confusion.sum() == report["n"] == 10_000
    assert confusion.sum(1).tolist() == np.bincount(mnist.test_labels, minlength=10).tolist()
    assert [c["support"] for c in report["per_class"]] == confusion.sum(1).tolist()
    assert len(report["misclassified"]) == report["n"] - np.trace(confusion)
    assert all(mnist.test_labels[m["index"]] == m["true"] != m["predicted"] for m in report["misclassified"])
    for c in report["per_class"]:
        assert c["recall"] == pytest.approx(confusion[c["class"], c["class"]] / c["support"])
    for name in ("confusion.png", "misclassified.png"):
        with Image.open(root / "log" / name) as image:
            assert image.format == "PNG" and min(image.size) > 300
    probs = np.load(root / "log" / evaluate.PROBABILITIES)["probs"]  # what the report summarised
    assert probs.shape == (10_000, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert report.pop("machine") == host.machine()  # where the report was computed
    assert evaluate.summarise(probs, mnist.test_labels) == report


def test_runs_made_apart_average_their_probabilities(tmp_path):
    """mean_probabilities: the ensemble of reports written apart is the mean of their softmax, float32; reports of
    different test sets are refused."""
    rng = np.random.default_rng(0)
    members = [rng.dirichlet(np.ones(10), 50).astype(np.float32) for _ in range(3)]
    images = np.zeros((50, 28, 28), np.uint8)
    labels = rng.integers(0, 10, 50)
    dirs = [evaluate.write(evaluate.summarise(p, labels), images, tmp_path / f"m{i}", probs=p)
            for i, p in enumerate(members)]  # fmt: skip
    mean = evaluate.mean_probabilities(dirs)
    assert mean.dtype == np.float32 and np.allclose(mean, np.mean(members, axis=0), rtol=0, atol=1e-7)
    assert not any(np.array_equal(mean.argmax(1), p.argmax(1)) for p in members)  # the mean is its own model
    evaluate.write(evaluate.summarise(members[0][:40], labels[:40]), images, tmp_path / "short", probs=members[0][:40])
    with pytest.raises(ValueError, match="different test sets"):
        evaluate.mean_probabilities([*dirs, tmp_path / "short"])


@pytest.mark.xdist_group("trained_cnn")
def test_cli_on_a_checkpoint_and_on_a_state_dict(mnist, trained_cnn, tmp_path, capsys):
    workdir = tmp_path / "ckpt"
    shutil.copytree(trained_cnn, workdir)  # the report goes into the workdir: not into the one other tests read
    capsys.readouterr()
    assert evaluate.main(["--workdir", str(workdir)]) == 0
    out = capsys.readouterr().out
    best = json.loads((workdir / "report" / "report.json").read_text())
    assert f"accuracy: {best['accuracy']:.2f} %" in out and "class  support  precision" in out
    meta_acc = float(out.split("test accuracy ")[1].split(" %")[0])  # the best checkpoint's, from training
    assert best["accuracy"] == pytest.approx(meta_acc, abs=0.01)
    torch = pytest.importorskip("torch")
    from torch_ref import models as torch_models

    torch.save(torch_models.get_model("cnn").state_dict(), tmp_path / "cnn.pth")
    args = ["--init-from", str(tmp_path / "cnn.pth"), "--model", "cnn", "--out", str(tmp_path / "r")]
    assert evaluate.main(args) == 0
    assert json.loads((tmp_path / "r" / "report.json").read_text())["n"] == 10_000


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "give --workdir or --torch-state-dict (with --model)"),
        (["--torch-state-dict", "x.pth"], "--torch-state-dict needs --model"),
        (["--init-from", "x.pth"], "--torch-state-dict needs --model"),  # the old spelling, an alias
        (["--workdir", "/nonexistent"], "--workdir /nonexistent: no such directory"),
    ],
)
def test_bad_arguments_are_one_line(argv, message, capsys):
    assert evaluate.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {message}")


def test_a_torch_ref_workdir_is_named_as_such(tmp_path, capsys):
    (tmp_path / "checkpoint.pt").write_bytes(b"torch_ref")  # never read
    assert evaluate.main(["--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --workdir {tmp_path} holds torch_ref's checkpoint"), err
    assert "['parts']['model']" in err[0] and "--torch-state-dict FILE --model NAME" in err[0]


def test_no_report_writes_none(mnist, tmp_path):  # mnist: the realdata mark, so the CLI may load it
    argv = ["--model", "cnn", "--train-size", "640", "--max-steps", "2", "--epochs", "1", "--no-progress"]
    argv += ["--batch-size", "64", "--chunk-steps", "1"]  # the other tiny cnn runs' program
    assert train.main([*argv, "--no-report", "--logdir", str(tmp_path)]) == 0
    assert (tmp_path / "metrics.json").exists() and not (tmp_path / "report.json").exists()
