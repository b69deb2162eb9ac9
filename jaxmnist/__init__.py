"""jaxmnist: the CNNs and ResNets of a PyTorch MNIST blog post, reimplemented in JAX/Flax."""

__version__ = "0.1.0"

# A command (`python -m jaxmnist.train`, `jaxmnist-train`) restarts itself here once, before jax loads, with
# transparent huge pages for its memory: 15-25 % faster train steps on CPU (jaxmnist/hugepages.py).
from jaxmnist import hugepages as _hugepages

_hugepages.reexec_if_command()
