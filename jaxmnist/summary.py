"""Parameter tables for jaxmnist's networks.

python -m jaxmnist.summary --model resnet
"""

import math
import sys

import jax
from flax import traverse_util

from jaxmnist import cli, engine, models


def count_params(tree) -> int:
    """Number of scalars in a pytree of arrays (or of jax.ShapeDtypeStructs)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def param_table(variables) -> str:
    """One row per parameter (path, shape, count), the total, and the BatchNorm statistics' count."""
    rows = [
        ('/'.join(path), str(tuple(leaf.shape)), f'{math.prod(leaf.shape):,}')
        for path, leaf in traverse_util.flatten_dict(variables['params']).items()
    ]
    rows.append(('total parameters', '', f'{count_params(variables["params"]):,}'))
    rows.append(('batch_stats values', '', f'{count_params(variables.get("batch_stats", {})):,}'))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f'{name:<{widths[0]}}  {shape:<{widths[1]}}  {count:>{widths[2]}}' for name, shape, count in rows]
    lines.insert(-2, '-' * len(lines[0]))
    return '\n'.join(lines)


def _main(argv) -> None:
    parser = cli.ArgumentParser(prog='python -m jaxmnist.summary', description=__doc__.splitlines()[0])
    parser.add_argument('--model', required=True, help=f'one of: {", ".join(models.MODELS)}')
    parser.add_argument(
        '--num-classes', type=int, default=None, help="output classes (default: the network's own, 10 or 1000)"
    )
    args = parser.parse_args(argv)
    if args.num_classes is not None and args.num_classes < 1:
        raise cli.UsageError(f'--num-classes must be >= 1, got {args.num_classes}')
    try:
        model = models.get_model(args.model, args.num_classes)
    except ValueError as error:
        raise cli.UsageError(str(error)) from None
    # Shapes are all a table needs: they initialise nothing, so resnet101 is instant.
    variables = engine.variable_shapes(model)
    print(param_table(variables))


def main(argv=None) -> int:
    return cli.run(lambda: _main(argv))


if __name__ == '__main__':
    sys.exit(main())
