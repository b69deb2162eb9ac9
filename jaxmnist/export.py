"""A trained model's weights as a PyTorch state_dict, for the blog's own classes.

    python -m jaxmnist.export --workdir ckpt/cnn --to cnn.pth              # the best checkpoint
    python -m jaxmnist.export --workdir ckpt/fast --which latest --to fast.pth

The file loads with `load_state_dict(torch.load(FILE), strict=True)` into torch_ref.models.get_model(NAME) (the
blog's classes) and gives the JAX model's logits (tests/test_export.py). The weights are the ones evaluation
uses: the moving average when the run kept one. jaxmnist.interop writes the file itself: no torch needed.
"""

from __future__ import annotations

import sys

from jaxmnist import cli, interop, predict


def build_parser() -> cli.ArgumentParser:
    p = cli.script_parser("python -m jaxmnist.export", __doc__)
    p.add_argument("--workdir", required=True, help="a jaxmnist.train --workdir")
    p.add_argument("--to", required=True, help="the .pth file to write")
    p.add_argument("--which", choices=("best", "latest"), default="best", help="which checkpoint (default best)")
    p.add_argument("--seed", type=int, help="with seeds trained together (--seeds ... vmapped): which one")
    return p


def _main(argv) -> None:
    args = build_parser().parse_args(argv)
    model = predict.from_workdir(args.workdir, args.which, args.seed)
    path = interop.save_torch(args.to, model.name, model.variables)
    head = "" if model.num_classes is None else f", num_classes={model.num_classes}"
    print(f"wrote {path}: {model.name} from {model.source}")
    print(f"load it with torch_ref.models.get_model({model.name!r}{head}).load_state_dict(torch.load({str(path)!r}))")


def main(argv: list[str] | None = None) -> int:
    return cli.run(lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
