"""The blog's PyTorch originals, and the bridge between them and jaxmnist."""

# jaxmnist's __init__ restarts torch_ref's commands too with $JAXMNIST_HUGEPAGES=1 (jaxmnist/hugepages.py), so that
# both frameworks run with the same memory.
import jaxmnist  # noqa: F401
