"""The blog's PyTorch originals, and the bridge between them and jaxmnist."""

# The same memory as jaxmnist's commands get ($JAXMNIST_HUGEPAGES=1), so that comparisons stay fair.
from jaxmnist import hugepages as _hugepages

_hugepages.reexec_if_command()
