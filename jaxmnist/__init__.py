"""jaxmnist: the CNNs and ResNets of a PyTorch MNIST blog post, reimplemented in JAX/Flax."""

__version__ = "0.1.0"

import sys as _sys

from jaxmnist import hugepages as _hugepages
from jaxmnist import malloc as _malloc

# A command (`python -m jaxmnist.train`, `jaxmnist-train`, torch_ref's), before jax or torch load: with
# $JAXMNIST_HUGEPAGES=1 it restarts itself once with transparent huge pages (jaxmnist/hugepages.py), and it keeps
# freed memory for the next step unless $JAXMNIST_MALLOC=system (jaxmnist/malloc.py). A library user's process is
# left as it is.
if _hugepages.is_command(_sys.orig_argv, _sys.argv[0] if _sys.argv else ''):
    _malloc.start_command()
