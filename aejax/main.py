"""Command line: python -m aejax.main --config=experiments/NAME.py[:ARG] --workdir=DIR."""

import re
import sys

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from aejax import accelerators, compilation, configs, distributed, errors, runner, train, visualize

FLAGS = flags.FLAGS
flags.DEFINE_string(
  "workdir", None, "Folder (local or gs://...) for checkpoints, metrics and figures."
)
distributed.define_flags(__name__)
compilation.define_flags(__name__)
flags.DEFINE_bool(
  "allow_config_change",
  False,
  "Resume the checkpoints in --workdir even though their config.json differs from --config.",
)
config_flags.DEFINE_config_file(
  "config", None, "Experiment config file, e.g. experiments/quickstart.py:tiny.", lock_config=True
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  runner.setup_logging()
  runner.run(start_then_train)


def start_then_train() -> None:
  # The processes meet before anything touches a device (JAX's rule); then the devices: on a
  # machine with an unused GPU or TPU, JAX's warning and aejax's line naming the install command
  # are the first lines of the log.
  distributed.initialize_from_flags(FLAGS)
  accelerators.log_devices()
  cache = compilation.use_cache(FLAGS.compilation_cache_dir)
  train_then_finalize(FLAGS.config, FLAGS.workdir, FLAGS.allow_config_change)
  compilation.log_cache_use(cache)


def train_then_finalize(config, workdir: str, allow_config_change: bool = False) -> None:
  """Trains the run, then draws its final figures and task metrics (config.final_figures)."""
  train.train_and_evaluate(config, workdir, allow_config_change)
  if config.final_figures and distributed.is_writer():
    visualize.finalize(workdir)


_OVERRIDE = re.compile(r"^--?(no)?config\.")


def config_flag_error(argv: list[str], error: Exception) -> errors.ConfigError | None:
  """The one-line ConfigError for a bad --config or --config.FIELD flag; None for other flags.

  ml_collections reports an unknown field as a bare KeyError, a value of the
  wrong type or a config file that raised as a flag error whose message may
  hold a whole traceback, and a missing config file as an OSError.
  """
  reference = configs.default_config()  # Every experiment config starts from it.
  for arg in argv[1:]:
    if not _OVERRIDE.match(arg):
      continue
    parts = _OVERRIDE.sub("", arg).split("=", 1)[0].split(".")
    node = reference
    for i, part in enumerate(parts):
      parent = ".".join(["config", *parts[:i]])
      if not isinstance(node, ml_collections.ConfigDict):
        return errors.ConfigError(f"{parent}: a value, not a group of fields (in {arg})")
      if part not in node:
        return errors.ConfigError(
          f"config.{'.'.join(parts[: i + 1])}: unknown field (in {arg}); {parent} has: "
          f"{', '.join(node.keys())}"
        )
      node = node[part]
  # A config file that raised an aejax error (e.g. an unknown `:ARG`): that error, innermost.
  cause, innermost = error, None
  for _ in range(20):  # Bounded: exception chains can be cycles.
    if cause is None:
      break
    if isinstance(cause, errors.ConfigError | errors.DataError):
      innermost = cause
    cause = cause.__cause__ or cause.__context__
  if innermost is not None:
    return errors.ConfigError(str(innermost).strip().splitlines()[-1])
  lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
  message = " ".join(lines)
  config_arg = next((a for a in argv[1:] if re.match(r"^--?config(=|$)", a)), "--config")
  if isinstance(error, OSError) or "config file" in message:
    return errors.ConfigError(f"{config_arg}: cannot load the config file: {lines[-1]}")
  field = re.search(r"flag --(config\.[\w.]+)", message)
  if field:
    return errors.ConfigError(f"{field.group(1)}: {message}")
  if "--config" in message or isinstance(error, KeyError | AttributeError):
    return errors.ConfigError(f"{config_arg}: {message}")
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, except that a bad --config or --config.FIELD is one line, exit 2."""
  try:
    # experiments/NAME.py from any folder: the copy installed with aejax stands in.
    rest = FLAGS(configs.resolve_experiment_args(argv))
    FLAGS.config.keys()  # ml_collections defers a config file's load error to its first use.
    configs.check_command(
      FLAGS.config,
      configs.TRAIN_COMMAND,
      "python -m aejax.main",
      configs.config_flag_value(argv) or "",
    )
    return rest
  except Exception as error:
    config_error = config_flag_error(argv, error)
    if config_error is not None:
      sys.stderr.write(f"ConfigError: {config_error}\n")
      sys.exit(2)
    if not isinstance(error, flags.Error):
      raise
    # What absl's own parser prints for the other flags.
    sys.stderr.write(f"FATAL Flags parsing error: {error}\n")
    sys.stderr.write("Pass --helpshort or --helpfull to see help on flags.\n")
    sys.exit(1)


def run():
  """Console-script entry point (aejax-train)."""
  # --help lists the flags of the program's own file; under a console script that is the
  # generated launcher, so this module's flags are declared its key flags.
  for flag in flags.FLAGS.get_key_flags_for_module(__name__):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
