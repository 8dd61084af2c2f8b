"""Tests for aejax/configs.py: validation fails fast and names the field."""

import pytest

from aejax import configs, errors


@pytest.mark.parametrize(
  "field,value,match",
  [
    ("batch_size", 30, "config.batch_size: 30 is not divisible by the number of devices"),
    ("batch_size", 0, "config.batch_size: must be a positive integer"),
    ("eval_batch_size", 12, "config.eval_batch_size"),
    ("model.latent_dim", 0, "config.model.latent_dim: must be >= 1"),
    ("model.name", "resnet", "config.model.name: unknown model 'resnet'; valid: dense_ae"),
    ("model.likelihood", "poisson", "config.model.likelihood"),
    ("model.activation", "swish2", "config.model.activation"),
    ("data.source", "s3", "config.data.source"),
    ("task.name", "inpaint", "config.task.name"),
    ("optimizer.name", "lamb", "config.optimizer.name"),
    ("optimizer.learning_rate", 0.0, "config.optimizer.learning_rate"),
    ("objective.beta", -1.0, "config.objective.beta"),
    ("keep_checkpoints", 0, "config.keep_checkpoints"),
    ("log_every_steps", 0, "config.log_every_steps"),
  ],
)
def test_bad_values_name_the_field(field, value, match):
  c = configs.default_config()
  section, _, name = field.rpartition(".")
  (c[section] if section else c)[name] = value
  with pytest.raises(errors.ConfigError, match=match):
    configs.validate(c, num_devices=8)


def test_default_config_is_valid_and_tiny_is_small():
  c = configs.default_config()
  configs.validate(c, num_devices=8)
  tiny = configs.make_tiny(configs.default_config())
  configs.validate(tiny, num_devices=8)
  assert tiny.total_steps <= 20 and tiny.data.train_limit <= 256


def test_parse_arg():
  assert configs.parse_arg("tiny, 4x", ("tiny", "4x")) == {"tiny", "4x"}
  assert configs.parse_arg(None, ("tiny",)) == set()
  with pytest.raises(errors.ConfigError, match="unknown big"):
    configs.parse_arg("big", ("tiny",))
