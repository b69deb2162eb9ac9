"""jaxmnist: the CNNs and ResNets of a PyTorch MNIST blog post, reimplemented in JAX/Flax."""

__version__ = "0.1.0"

# With $JAXMNIST_HUGEPAGES=1 a command (`python -m jaxmnist.train`, `jaxmnist-train`) restarts itself here once,
# before jax loads, with transparent huge pages for its memory (jaxmnist/hugepages.py).
from jaxmnist import hugepages as _hugepages

_hugepages.reexec_if_command()
