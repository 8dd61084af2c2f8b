"""aejax's documented error for bad configuration (data errors are aejax.data.DataError)."""


class ConfigError(ValueError):
  """A config field is missing, unknown, of the wrong type or has an impossible value.

  The message starts with the field (`config.model.latent_dim: ...`) and says
  what is valid.
  """
