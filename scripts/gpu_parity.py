"""Is a JAX network the same model as its torch_ref original on this device? Each framework's float32 logits on the
real test set, against a float64 reference, with the settings each framework has by default and with full float32.

    python scripts/gpu_parity.py                                   # on a GPU: what scripts/gpu_lease.sh runs
    python scripts/gpu_parity.py --networks cnn --images 256 --steps 5 --out /tmp/parity.json   # a smoke run

For each network: torch_ref's model trains a few SGD steps on real MNIST on the device (so that its BatchNorm
statistics and its predictions mean something), its weights go through the bridge (torch_ref.convert) into
jaxmnist's model, and both predict the test set in eval mode. The reference is torch_ref's model in float64 on the
CPU. On a GPU, JAX computes float32 convolutions and matmuls in TF32 by default and torch its cuDNN convolutions
(docs/parity.md, "GPU: TF32"): each framework's error against the reference is the measure, the other framework's
beside it, then again with TF32 off in both (`jax_default_matmul_precision` 'highest'; torch's allow_tf32 off).
Writes benchmarks/parity-<platform>-<device>.json (device, versions) and prints the table.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import sys
from pathlib import Path

import needs_jaxmnist  # noqa: F401  (before jaxmnist: one line, not a traceback, where it is missing)
import numpy as np

from benchlib import environment
from jaxmnist import cli, runlog
from jaxmnist import data as data_lib
from jaxmnist.cli import UsageError

ROOT = Path(__file__).resolve().parent.parent
# The most used first: a run cut by its time limit (gpu_lease.sh's PARITY_S) keeps those. resnet101: minutes of
# float64 on the CPU.
NETWORKS = ("cnn", "resnet", "fast", "cnn_deep", "resnet18")


def train_torch(name: str, data, device: str, steps: int):
    """torch_ref's network (benchlib's: seed 0, its natural head) after `steps` SGD steps of 64 real images, in
    eval mode, on the CPU."""
    import torch
    import torch.nn.functional as F

    from benchlib import torch_side
    from torch_ref import models as torch_models

    model = torch_side.torch_model(name, device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)
    images, labels = torch_side.device_tensors(data.train_images[: 64 * steps], data.train_labels[: 64 * steps], device)
    for k in range(steps):
        opt.zero_grad()
        batch = slice(64 * k, 64 * (k + 1))
        F.cross_entropy(model(torch_models.prepare_input(name, images[batch])), labels[batch]).backward()
        opt.step()
    return model.eval().cpu()


def torch_logits(name: str, model, images, labels, device: str, dtype, tf32: bool) -> np.ndarray:
    """The model's logits of `images` (uint8, normalised as benchlib's device tensors) on `device` in `dtype`."""
    import torch

    from benchlib import torch_side
    from torch_ref import models as torch_models

    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    if not tf32:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        model = model.to(device=device, dtype=dtype)
        out = []
        with torch.no_grad():
            for start in range(0, len(images), 500):
                x, _ = torch_side.device_tensors(images[start : start + 500], labels[start : start + 500], device)
                out.append(model(torch_models.prepare_input(name, x.to(dtype))).double().cpu().numpy())
        return np.concatenate(out)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def jax_logits(name: str, variables, images, highest: bool) -> np.ndarray:
    import jax

    from jaxmnist import models

    apply = jax.jit(functools.partial(models.get_model(name).apply, train=False))  # the natural head, as torch's
    context = jax.default_matmul_precision("highest") if highest else contextlib.nullcontext()
    with context:
        out = [np.asarray(apply(variables, data_lib.normalize(images[s : s + 500])))
               for s in range(0, len(images), 500)]  # fmt: skip
    return np.concatenate(out).astype(np.float64)


def compare(name: str, data, device: str, steps: int, images: int) -> dict:
    """Every variant's logits against the float64 reference: max and mean absolute error, and predictions."""
    import torch

    from torch_ref import convert

    model = train_torch(name, data, device, steps)
    variables = convert.torch_to_flax(name, model.state_dict())
    test, labels = data.test_images[:images], data.test_labels[:images]
    reference = torch_logits(name, model, test, labels, "cpu", torch.float64, tf32=False)
    variants = {
        "torch": torch_logits(name, model, test, labels, device, torch.float32, tf32=True),
        "jax": jax_logits(name, variables, test, highest=False),
        "torch_fp32": torch_logits(name, model, test, labels, device, torch.float32, tf32=False),
        "jax_fp32": jax_logits(name, variables, test, highest=True),
    }
    predicted = reference.argmax(1)
    accuracy = float((predicted == np.asarray(labels)).mean() * 100)
    record = {"network": name, "images": len(test), "train_steps": steps, "reference_accuracy": accuracy}
    for key, logits in variants.items():
        err = np.abs(logits - reference)
        record[key] = {"max_abs": float(err.max()), "mean_abs": float(err.mean()),
                       "predictions_changed": int((logits.argmax(1) != predicted).sum())}  # fmt: skip
    for suffix in ("", "_fp32"):
        record[f"jax_vs_torch{suffix}_predictions_differ"] = int(
            (variants["jax" + suffix].argmax(1) != variants["torch" + suffix].argmax(1)).sum()
        )
    return record


def table(records: list[dict]) -> str:
    lines = [
        "Max |logit - float64 reference| over the test images (predictions changed against the reference's):",
        "",
        "| network | images (reference accuracy) | JAX default | torch default | JAX fp32 | torch fp32 | JAX vs torch "
        "predictions differ (default / fp32) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    cell = lambda r: f"{r['max_abs']:.2e} ({r['predictions_changed']})"  # noqa: E731
    for r in records:
        lines.append(
            f"| {r['network']} | {r['images']} ({r['reference_accuracy']:.2f} %) | {cell(r['jax'])} | "
            f"{cell(r['torch'])} | {cell(r['jax_fp32'])} | {cell(r['torch_fp32'])} | "
            f"{r['jax_vs_torch_predictions_differ']} / {r['jax_vs_torch_fp32_predictions_differ']} |"
        )
    return "\n".join(lines) + "\n"


def build_parser() -> cli.ArgumentParser:
    p = cli.script_parser("scripts/gpu_parity.py", __doc__)
    p.add_argument("--networks", default=",".join(NETWORKS), help=f"comma-separated (default {','.join(NETWORKS)})")
    p.add_argument("--images", type=int, default=10_000, help="test images compared (default: all 10,000)")
    p.add_argument("--steps", type=int, default=30, help="SGD steps of 64 images torch_ref trains first (default 30)")
    p.add_argument("--data-dir", help="directory of the four MNIST IDX files (else jaxmnist.data's cache/sources)")
    p.add_argument("--out", help="JSON file (default benchmarks/parity-<platform>-<device>.json)")
    return p


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from jaxmnist.models import MODELS

    networks = [n.strip() for n in args.networks.split(",") if n.strip()]
    if unknown := [n for n in networks if n not in MODELS]:
        raise UsageError(f"unknown network(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    if not 1 <= args.images <= 10_000 or args.steps < 1:
        raise UsageError(f"--images must be 1-10000 and --steps at least 1, got {args.images} and {args.steps}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    env = environment.environment(device)
    out = Path(args.out) if args.out else ROOT / "benchmarks" / (
        f"parity-{env['platform']}-{environment.slug(env['device_kind'])}.json")  # fmt: skip
    data = data_lib.load("mnist", args.data_dir, progress=False)
    doc = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(), "env": env, "results": []}
    where = f"{env['platform']}:{env['device_kind']} (torch on {device})"
    print(f"parity on {where}, {args.images} test images", flush=True)
    for name in networks:
        doc["results"].append(compare(name, data, device, args.steps, args.images))
        r = doc["results"][-1]
        print(f"  {name}: max error JAX {r['jax']['max_abs']:.2e}, torch {r['torch']['max_abs']:.2e}; "
              f"predictions differ {r['jax_vs_torch_predictions_differ']}", flush=True)  # fmt: skip
        out.parent.mkdir(parents=True, exist_ok=True)
        runlog.atomic_write(out, json.dumps(doc, indent=1, default=str).encode())  # after each: a cut run keeps it
    print("\n" + table(doc["results"]) + f"\nwrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(lambda: _main(argv), user_errors=(data_lib.DataError,))


if __name__ == "__main__":
    sys.exit(main())
