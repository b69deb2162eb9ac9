"""The blog's PyTorch originals, and the bridge between them and jaxmnist."""

# jaxmnist's __init__ sets up torch_ref's commands' memory as its own (freed memory kept, jaxmnist/malloc.py; huge
# pages with $JAXMNIST_HUGEPAGES=1, jaxmnist/hugepages.py), so that both frameworks run with the same memory.
import jaxmnist  # noqa: F401
