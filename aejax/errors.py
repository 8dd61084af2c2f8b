"""aejax's documented error for bad configuration (data errors are aejax.data.DataError)."""


class ConfigError(ValueError):
  """A config field is missing, unknown, of the wrong type or has an impossible value.

  The message starts with the field (`config.model.latent_dim: ...`) and says
  what is valid.
  """


class CheckpointError(ValueError):
  """A workdir has no usable checkpoint, or it does not match its config."""


class InputError(ValueError):
  """Arrays given to the aejax.load API have the wrong shape, dtype or range."""
