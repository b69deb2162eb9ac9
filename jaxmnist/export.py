"""A trained model's weights as a PyTorch state_dict, for the blog's own classes.

    python -m jaxmnist.export --workdir ckpt/cnn --torch-state-dict cnn.pth            # the best checkpoint
    python -m jaxmnist.export --workdir ckpt/fast --which latest --torch-state-dict fast.pth

The file loads with `load_state_dict(torch.load(FILE), strict=True)` into torch_ref.models.get_model(NAME) (the
blog's classes) and gives the JAX model's logits (tests/test_export.py). The weights are the ones evaluation
uses: the moving average when the run kept one. jaxmnist.interop writes the file itself: no torch needed.
"""

from __future__ import annotations

import sys

from jaxmnist import cli, compile_cache, interop, weights


def build_parser() -> cli.ArgumentParser:
    p = cli.script_parser("python -m jaxmnist.export", __doc__)
    weights.add_flags(p, torch=False, ensemble=False, computes=False)
    compile_cache.add_flag(p)
    p.add_argument(
        "--torch-state-dict", "--to", dest="to", metavar="FILE.pth", help="the state_dict to write (--to: an alias)"
    )
    return p


def _main(argv) -> None:
    args = build_parser().parse_args(argv)
    compile_cache.configure(args.no_compile_cache)
    if not args.workdir or not args.to:
        raise cli.UsageError("give --workdir (the checkpoint) and --torch-state-dict (the .pth file to write)")
    model = weights.from_workdir(args.workdir, args.which, args.seed)
    path = interop.save_torch(args.to, model.name, model.variables)
    head = "" if model.num_classes is None else f", num_classes={model.num_classes}"
    print(f"wrote {path}: {model.name} from {model.source}")
    print(f"load it with torch_ref.models.get_model({model.name!r}{head}).load_state_dict(torch.load({str(path)!r}))")


def main(argv: list[str] | None = None) -> int:
    return cli.run(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
