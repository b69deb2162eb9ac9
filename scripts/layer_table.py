"""Per-layer CPU cost of convolutions in JAX (XLA:CPU) and torch (oneDNN): forward, and forward plus backward
(gradients of the input and the kernel), one layer at a time, timed round-robin (benchlib.timing.measure_interleaved)
so that all see the same machine; the best round of each is reported. JAX runs each of jaxmnist.convs's
candidates: XLA's convolution with its default kernels (`xla`, YNNPACK where XLA uses it) and with Eigen's
(`eigen`), im2col + GEMM (`matmul`), GEMMs over input rows (`rows`), a strided layer's input gradient by
phases (`phases`; at stride 1 the convolution) and oneDNN's kernels called from XLA (`onednn`, where they build);
`--impls` picks (default all; the forward column is the first's).

    python scripts/layer_table.py                       # the fast preset's layers at batch 256
    python scripts/layer_table.py --batch-size 512 --layers 28:1:32:3,14:32:64:3
    python scripts/layer_table.py --blog --batch-size 512   # every convolution of cnn, cnn_deep and resnet

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

from benchlib.environment import isa_caps
from benchlib.timing import measure_interleaved
from jaxmnist import autotune, convs, models

# The fast network's convolutions (jaxmnist.models.FastNet) and two alternatives that were measured for it.
DEFAULT_LAYERS = "28:1:32:3,28:32:32:3,14:32:64:3,14:64:64:3,7:64:128:3,28:1:32:5,14:32:64:5"


def jax_layer(impl: str, b: int, h: int, cin: int, cout: int, k: int, pad: int, stride: int = 1):
    """(forward, forward plus both gradients) of one layer in one of autotune.CANDIDATES."""
    library, formulation = autotune.CANDIDATES[impl]
    conv, options = convs.FORMULATIONS[formulation], convs.library_options(library)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((b, h, h, cin), np.float32))
    w = jnp.asarray(np.random.default_rng(1).standard_normal((k, k, cin, cout), np.float32))
    fwd = jax.jit(lambda x, w: conv(x, w, stride, pad), compiler_options=options)
    loss = lambda x, w: jnp.sum(conv(x, w, stride, pad) ** 2)
    both = jax.jit(jax.grad(loss, argnums=(0, 1)), compiler_options=options)
    return (lambda: fwd(x, w).block_until_ready()), (lambda: jax.block_until_ready(both(x, w)))


def torch_layer(b: int, h: int, cin: int, cout: int, k: int, pad: int, stride: int = 1):
    x = torch.randn(b, cin, h, h, requires_grad=True)
    w = torch.randn(cout, cin, k, k, requires_grad=True)

    def fwd():
        with torch.no_grad():
            F.conv2d(x, w, stride=stride, padding=pad)

    def both():
        (F.conv2d(x, w, stride=stride, padding=pad) ** 2).sum().backward()

    return fwd, both


def blog_layers() -> str:
    """Every distinct convolution of the blog's cnn, cnn_deep and resnet, as H:Cin:Cout:K:pad P[:s S]."""
    seen = []
    for name in ("cnn", "cnn_deep", "resnet"):
        for g in convs.geometries(models.get_model(name), 1):
            spec = f"{g.h}:{g.cin}:{g.cout}:{g.k}:pad{g.padding}" + (f":s{g.stride}" if g.stride != 1 else "")
            if spec not in seen:
                seen.append(spec)
    return ",".join(seen)


def parse_layer(spec: str) -> tuple[int, int, int, int, int, int, str]:
    """H:Cin:Cout:K, then optionally `valid` or `padP`, and `sS` (stride): (h, cin, cout, k, pad, stride, name)."""
    fields = spec.split(":")
    h, cin, cout, k = map(int, fields[:4])
    pad, stride = k // 2, 1
    for extra in fields[4:]:
        if extra == "valid":
            pad = 0
        elif extra.startswith("pad"):
            pad = int(extra[3:])
        elif extra.startswith("s"):
            stride = int(extra[1:])
        else:
            raise SystemExit(f"error: bad layer {spec!r}: H:Cin:Cout:K[:valid|:padP][:sS]")
    name = f"{h}x{h} {cin}->{cout} {k}x{k}" + (f"/{stride}" if stride != 1 else "") + f" pad {pad}"
    return h, cin, cout, k, pad, stride, name


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--layers", default=DEFAULT_LAYERS, help="comma-separated H:Cin:Cout:K[:valid|:padP][:sS]")
    p.add_argument("--blog", action="store_true", help="every convolution of the blog's cnn, cnn_deep and resnet")
    p.add_argument("--impls", help="JAX candidates, comma-separated (default: all that run here; jaxmnist.autotune)")
    p.add_argument("--repeats", type=int, default=10, help="rounds: one call of each per round")
    args = p.parse_args()
    b, impls = args.batch_size, (args.impls or ",".join(autotune.candidates())).split(",")
    layers = blog_layers() if args.blog else args.layers
    caps = isa_caps()  # an emulated older CPU (benchmarks/README.md, "A Zen 5 ..., and AVX2 emulated on it")
    caps_text = f"caps: {', '.join(f'{k}={v}' for k, v in caps.items())}; " if caps else ""
    print(
        f"batch {b}; jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads, ATen {torch.backends.cpu.get_cpu_capability()}); "
        f"CPU: {autotune.cpu_identity()}; {caps_text}best of {args.repeats}, ms"
    )
    heads = [f"jax {impls[0]} fwd", "torch fwd", *(f"jax {i} fwd+bwd" for i in impls), "torch fwd+bwd"]
    print("| layer | MMAC/img | " + " | ".join(heads) + " | fastest jax / torch (fwd+bwd) |")
    print("|---|---:|" + "---:|" * len(heads) + "---|")
    for spec in layers.split(","):
        h, cin, cout, k, pad, stride, name = parse_layer(spec)
        out = (h + 2 * pad - k) // stride + 1
        mmac = out * out * cin * cout * k * k / 1e6
        fns = {}
        for impl in impls:
            fns[f"{impl} f"], fns[f"{impl} b"] = jax_layer(impl, b, h, cin, cout, k, pad, stride)
        fns["torch f"], fns["torch b"] = torch_layer(b, h, cin, cout, k, pad, stride)
        timings = measure_interleaved(fns, lambda _: None, rounds=args.repeats)  # every fn syncs itself
        ms = {name_: 1e3 * timings[name_].summary()["min_s"] for name_ in fns}
        best = min(impls, key=lambda i: ms[f"{i} b"])
        cells = [ms[f"{impls[0]} f"], ms["torch f"], *(ms[f"{i} b"] for i in impls), ms["torch b"]]
        ratio = f"{best}: {ms[f'{best} b'] / ms['torch b']:.2f}"
        print(f"| {name} | {mmac:.2f} | " + " | ".join(f"{c:.1f}" for c in cells) + f" | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
