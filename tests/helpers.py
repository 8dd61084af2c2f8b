"""Shared test helpers: the tiny run configs several test modules train, and the golden values."""

import json
import pathlib

import pytest

from aejax import configs

# Final metrics recorded with the version before the package was layered (see
# tests/fixtures/golden_metrics.json). Float32 sums over the same data in the same order;
# another CPU's XLA build may fuse and vectorise them differently, hence a relative tolerance.
GOLDEN = json.loads(
  (pathlib.Path(__file__).parent / "fixtures" / "golden_metrics.json").read_text()
)
GOLDEN_REL = 1e-4


def assert_golden(got: dict, want: dict) -> None:
  """`got` final metrics equal the recorded `want`, name by name."""
  assert got.keys() == want.keys()
  for name, value in want.items():
    assert got[name] == pytest.approx(value, rel=GOLDEN_REL, abs=1e-5), name


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
