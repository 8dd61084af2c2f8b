"""aejax: autoencoders and variational autoencoders in JAX/Flax."""

__version__ = "0.1.0"


def load(workdir, step=None):
  """The model trained in `workdir` (newest checkpoint, or `step`): see aejax.api."""
  from aejax import api  # Imported on use: `import aejax` stays light.

  return api.load(workdir, step)
