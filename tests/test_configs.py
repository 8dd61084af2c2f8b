"""Tests for aejax/configs.py: validation fails fast and names the field."""

import ml_collections
import pytest

from aejax import configs, errors


@pytest.mark.parametrize(
  "field,value,match",
  [
    ("batch_size", 30, "config.batch_size: 30 is not divisible by the number of devices"),
    ("batch_size", 0, "config.batch_size: must be an integer >= 1, got 0"),
    ("eval_batch_size", 12, "config.eval_batch_size"),
    ("model.latent_dim", 0, "config.model.latent_dim: must be an integer >= 1, got 0"),
    ("model.hidden_widths", (64, 0), "config.model.hidden_widths: must be a sequence of integers"),
    ("seed", -1, r"config.seed: must be an integer in \[0, 4294967295\]"),
    ("task.noise_amount", 1.5, "config.task.noise_amount"),
    ("data.train_limit", -5, "config.data.train_limit: must be an integer >= 0"),
    ("model.name", "resnet", "config.model.name: unknown model 'resnet'; valid: dense_ae"),
    ("model.likelihood", "poisson", "config.model.likelihood"),
    ("model.activation", "swish2", "config.model.activation"),
    ("data.source", "s3", "config.data.source"),
    ("task.name", "inpaint", "config.task.name"),
    ("optimizer.name", "lamb", "config.optimizer.name"),
    ("optimizer.learning_rate", 0.0, "config.optimizer.learning_rate"),
    ("objective.beta", -1.0, "config.objective.beta"),
    ("objective.beta", float("nan"), "config.objective.beta: must be a finite number"),
    ("keep_checkpoints", 0, "config.keep_checkpoints"),
    ("log_every_steps", 0, "config.log_every_steps"),
    ("model.dtype", "float16", "config.model.dtype: unknown dtype 'float16'; valid: float32"),
    ("model.conv_impl", "cudnn", "config.model.conv_impl: unknown convolution 'cudnn'"),
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


@pytest.mark.parametrize(
  "field,value,match",
  [
    ("batch_size", 32.0, "config.batch_size: must be an integer, got 32.0"),
    ("progress_bar", 1, "config.progress_bar: must be True or False, got 1"),
    ("model.hidden_widths", "64", "config.model.hidden_widths: must be a sequence"),
    ("data.name", None, "config.data.name: must be a string, got None"),
    ("optimizer.learning_rate", "1e-3", "config.optimizer.learning_rate: must be a finite number"),
  ],
)
def test_wrong_types_name_the_field(field, value, match):
  """Types ml-collections cannot check: a config built from a dict, e.g. a saved config.json."""
  d = configs.default_config().to_dict()
  section, _, name = field.rpartition(".")
  (d[section] if section else d)[name] = value
  with pytest.raises(errors.ConfigError, match=match):
    configs.validate(ml_collections.ConfigDict(d), num_devices=8)


def test_unknown_and_missing_fields_are_named():
  c = configs.default_config()
  c.model.latnet_dim = 8  # A typo in an experiment file adds a field instead of setting one.
  with pytest.raises(errors.ConfigError, match="config.model.latnet_dim: unknown field; did you"):
    configs.validate(c, num_devices=8)
  c = configs.default_config()
  del c.optimizer["b1"]
  with pytest.raises(errors.ConfigError, match="config.optimizer.b1: missing"):
    configs.validate(c, num_devices=8)


@pytest.mark.parametrize(
  "changes,shape,num_train,match",
  [
    ({"batch_size": 64}, (8, 8, 1), 40, "config.batch_size: 64 is larger than the training set"),
    (
      {"task.name": "superres", "task.superres_factor": 3},
      (28, 28, 1),
      100,
      "config.task.superres_factor: 3 does not divide the image size 28x28",
    ),
  ],
)
def test_checks_that_need_the_data(changes, shape, num_train, match):
  c = configs.default_config()
  c.batch_size = 32
  for field, value in changes.items():
    section, _, name = field.rpartition(".")
    (c[section] if section else c)[name] = value
  with pytest.raises(errors.ConfigError, match=match):
    configs.validate_for_data(c, shape, num_train, shape)
  with pytest.raises(errors.ConfigError, match="config.data.eval_split: images of"):
    configs.validate_for_data(configs.default_config(), (28, 28, 1), 1000, (32, 32, 3))
  c.task.superres_factor = 4
  c.batch_size = min(c.batch_size, num_train)
  configs.validate_for_data(c, (28, 28, 1), num_train, (28, 28, 1))
