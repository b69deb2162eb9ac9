"""Per-layer CPU cost of convolutions in JAX (XLA:CPU) and torch (oneDNN): forward, and forward plus backward
(gradients of the input and the kernel), one layer at a time, timed round-robin (benchlib.timing.measure_interleaved)
so that all four see the same machine; the best round of each is reported.

    python scripts/layer_table.py                       # the fast preset's layers at batch 256
    python scripts/layer_table.py --batch-size 512 --layers 28:1:32:3,14:32:64:3

A layer is H:Cin:Cout:K (a K x K convolution on an H x H map, stride 1, 'SAME' padding as torch's padding=K//2),
or H:Cin:Cout:K:valid (no padding).
The table it prints is kept in benchmarks/README.md ("Per-layer costs").
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from benchlib.timing import measure_interleaved
from jaxmnist import models

# The fast network's convolutions (jaxmnist.models.FastNet) and two alternatives that were measured for it.
DEFAULT_LAYERS = "28:1:32:3,28:32:32:3,14:32:64:3,14:64:64:3,7:64:128:3,28:1:32:5,14:32:64:5"


def jax_layer(b: int, h: int, cin: int, cout: int, k: int, pad: int):
    x = jnp.asarray(np.random.default_rng(0).standard_normal((b, h, h, cin), np.float32))
    w = jnp.asarray(np.random.default_rng(1).standard_normal((k, k, cin, cout), np.float32))
    fwd = jax.jit(lambda x, w: models.conv2d(x, w, 1, pad))
    both = jax.jit(jax.grad(lambda x, w: jnp.sum(models.conv2d(x, w, 1, pad) ** 2), argnums=(0, 1)))
    return (lambda: fwd(x, w).block_until_ready()), (lambda: jax.block_until_ready(both(x, w)))


def torch_layer(b: int, h: int, cin: int, cout: int, k: int, pad: int):
    x = torch.randn(b, cin, h, h, requires_grad=True)
    w = torch.randn(cout, cin, k, k, requires_grad=True)

    def fwd():
        with torch.no_grad():
            F.conv2d(x, w, padding=pad)

    def both():
        (F.conv2d(x, w, padding=pad) ** 2).sum().backward()

    return fwd, both


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--layers", default=DEFAULT_LAYERS, help="comma-separated H:Cin:Cout:K")
    p.add_argument("--repeats", type=int, default=10, help="rounds: one call of each of the four per round")
    args = p.parse_args()
    b = args.batch_size
    print(f"batch {b}; jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); best of {args.repeats}, ms")
    print("| layer | MMAC/img | jax fwd | torch fwd | jax fwd+bwd | torch fwd+bwd | jax/torch (fwd+bwd) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for spec in args.layers.split(","):
        fields = spec.split(":")
        h, cin, cout, k = map(int, fields[:4])
        valid = fields[4:] == ["valid"]
        pad, out = (0, h - k + 1) if valid else (k // 2, h)
        mmac = out * out * cin * cout * k * k / 1e6
        fns = dict(zip(("jf", "jb"), jax_layer(b, h, cin, cout, k, pad)))
        fns.update(zip(("tf", "tb"), torch_layer(b, h, cin, cout, k, pad)))
        timings = measure_interleaved(fns, lambda _: None, rounds=args.repeats)  # every fn syncs itself
        jf, jb, tf, tb = (1e3 * timings[name].summary()["min_s"] for name in ("jf", "jb", "tf", "tb"))
        name = f"{h}x{h} {cin}->{cout} {k}x{k}" + (" valid" if valid else "")
        print(f"| {name} | {mmac:.2f} | {jf:.1f} | {tf:.1f} | {jb:.1f} | {tb:.1f} | {jb / tb:.2f} |", flush=True)


if __name__ == "__main__":
    main()
