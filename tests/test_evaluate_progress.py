"""aejax.evaluate in a log file: progress with an ETA in every long phase, and their durations."""

import json
import logging

import pytest
from helpers import tiny_digits_config

from aejax import evaluate as ev
from aejax import progress, train

PHASES = ["bounds", "active_units", "probes", "fid"]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
  """A tiny VAE evaluated with every phase, and the progress module's log records."""
  workdir = tmp_path_factory.mktemp("vae")
  train.train_and_evaluate(tiny_digits_config(16), str(workdir))
  records = []
  handler = logging.Handler(logging.INFO)
  handler.emit = records.append
  logger = logging.getLogger("aejax.progress")
  # setLevel, not `logger.level =`: it also clears the logger's cached isEnabledFor answers,
  # which an earlier evaluation in this process left at the default WARNING.
  level = logger.level
  logger.setLevel(logging.INFO)
  logger.addHandler(handler)
  # Every update gets its line: the two batches of the bounds pass report an ETA.
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(progress, "DEFAULT_INTERVAL", 1e-6)
    try:
      results = ev.evaluate(
        workdir,
        nll_samples=16,
        limit=100,
        batch_size=64,
        probe_train_size=200,
        fid_classifier_steps=10,
        fid_cache_dir=tmp_path_factory.mktemp("fid_cache"),
      )
    finally:
      logger.removeHandler(handler)
      logger.setLevel(level)
  saved = json.loads((workdir / ev.RESULTS_JSON).read_text())
  return results, saved, [r.getMessage() for r in records]


def test_summary_says_how_long_each_phase_took(evaluated):
  results, saved, _ = evaluated
  seconds = results["phase_seconds"]
  assert list(seconds) == PHASES
  assert all(isinstance(s, float) and s >= 0 for s in seconds.values())
  assert seconds["bounds"] > 0 and seconds["fid"] > 0
  assert sum(seconds.values()) <= results["seconds"]
  # The bounds phase is the main pass (which times itself from the same start).
  assert seconds["bounds"] == pytest.approx(results["main_pass_seconds"], rel=0.05, abs=0.05)
  assert saved["phase_seconds"] == pytest.approx(seconds)


def test_every_phase_logs_start_and_end(evaluated):
  _, _, lines = evaluated
  for name in PHASES:
    starts = [i for i, line in enumerate(lines) if line.startswith(f"{name}: started")]
    ends = [i for i, line in enumerate(lines) if line.startswith(f"{name}: done in ")]
    assert len(starts) == len(ends) == 1 and starts[0] < ends[0], name
  assert lines.index("bounds: started (100 images)") < lines.index("active_units: started")


def test_image_passes_report_rate_and_eta(evaluated):
  _, _, lines = evaluated
  assert not any("\r" in line for line in lines)
  bounds = [line for line in lines if line.startswith("bounds: ") and "/100 images" in line]
  # After the first batch of 64: the rate and the time left for the other 36 images.
  assert any(
    line.startswith("bounds: 64/100 images (64.0%), ") and "images/s, ETA " in line
    for line in bounds
  ), bounds
  assert bounds[-1].startswith("bounds: 100/100 images (100.0%), ") and "done in" in bounds[-1]
  codes = [line for line in lines if line.startswith("probe codes: ")]
  assert codes[-1].startswith("probe codes: 200/200 images (100.0%), ") and "done in" in codes[-1]
