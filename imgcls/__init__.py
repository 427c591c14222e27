"""imgcls: train, fine-tune and evaluate image classifiers with JAX/Flax."""

from imgcls.host_memory import keep_freed_memory

__version__ = "0.1.0"

keep_freed_memory()
