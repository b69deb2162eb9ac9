"""The blog's PyTorch originals, and the bridge between them and jaxmnist."""

# The same memory as jaxmnist's commands get, so that comparisons stay fair (jaxmnist/hugepages.py).
from jaxmnist import hugepages as _hugepages

_hugepages.reexec_if_command()
