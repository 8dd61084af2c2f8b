"""aejax: autoencoders and variational autoencoders in JAX/Flax.

`aejax.load(workdir)` is the trained-model API (aejax/api.py); the package's
layers, bottom to top, are listed in docs/architecture.md.
"""

from aejax.api import load

__version__ = "0.1.0"
__all__ = ["load"]
