"""A zoo model's own hyper-parameters: `config.model.options`, checked against its defaults.

aejax's config has a fixed set of fields, checked before anything runs; a
model's own knobs (a penalty's weight, the number of pseudo-inputs) live in
the free group `config.model.options`, and the model checks them here: an
unknown name or a value of the wrong type is a ConfigError naming the field.
"""

from typing import Any

from aejax import errors


def read_options(model_config, defaults: dict[str, Any]) -> dict[str, Any]:
  """`defaults` updated by `model_config.options`, each value of its default's type.

  Ints are accepted for float options (1 for 1.0); bools are never numbers.
  """
  given = dict(model_config.get("options", {}) or {})
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise errors.ConfigError(
      f"config.model.options.{unknown[0]}: unknown option for model {model_config.name!r}; "
      f"valid: {', '.join(sorted(defaults)) or 'none'}"
    )
  out = dict(defaults)
  for name, value in given.items():
    default = defaults[name]
    if isinstance(default, bool):
      ok = isinstance(value, bool)
    elif isinstance(default, int):
      ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
      ok = isinstance(value, int | float) and not isinstance(value, bool)
      value = float(value) if ok else value
    elif isinstance(default, tuple):
      ok = isinstance(value, tuple | list)
      value = tuple(value) if ok else value
    else:
      ok = isinstance(value, type(default))
    if not ok:
      raise errors.ConfigError(
        f"config.model.options.{name}: expected {type(default).__name__} like {default!r} "
        f"for model {model_config.name!r}, got {value!r}"
      )
    out[name] = value
  return out


def check(condition: bool, model_config, name: str, message: str) -> None:
  """A ConfigError `config.model.options.NAME: message` unless `condition`."""
  if not condition:
    raise errors.ConfigError(
      f"config.model.options.{name}: {message} (model {model_config.name!r})"
    )
