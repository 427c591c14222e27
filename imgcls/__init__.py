"""imgcls: train, fine-tune and evaluate image classifiers with JAX/Flax."""

__version__ = "0.1.0"
