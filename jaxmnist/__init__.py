"""jaxmnist: the CNNs and ResNets of a PyTorch MNIST blog post, reimplemented in JAX/Flax."""

__version__ = "0.1.0"
