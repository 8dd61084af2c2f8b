"""Shared test helpers: the tiny run configs several test modules train."""

from aejax import configs


def tiny_digits_config(total_steps: int | None = None, **model):
  """A seconds-long dense VAE run on the embedded digits; `model` overrides config.model fields.

  With total_steps, the run evaluates and checkpoints once, at the end.
  """
  c = configs.default_config()
  c.data.name = "digits"
  c.model.name = "dense_vae"
  c.model.latent_dim = 2
  c.model.hidden_widths = (64,)
  for k, v in model.items():
    c.model[k] = v
  c = configs.make_tiny(c)
  c.final_figures = False
  if total_steps is not None:
    c.total_steps = c.eval_every_steps = c.checkpoint_every_steps = total_steps
  return c
