"""The blog's PyTorch originals, and the bridge between them and jaxmnist."""
