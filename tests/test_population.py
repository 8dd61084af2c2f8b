"""train.train_population: every vmapped member equals its separate run, and resumes."""

import copy
import json
import os
import signal

import jax
import numpy as np
import pytest
from helpers import GOLDEN, assert_golden, tiny_digits_config

import aejax
from aejax import errors, figures, metrics, parallel, steps, train

# Seeds with a vmapped beta and learning rate too; the KL warm-up makes beta enter every step.
MEMBERS = ((0, 1.0, 1e-3), (1, 1.0, 1e-3), (2, 4.0, 3e-3))
STEPS = 8


def _configs():
  base = tiny_digits_config(total_steps=STEPS)
  base.objective.kl_warmup_steps = 4
  out = []
  for seed, beta, learning_rate in MEMBERS:
    c = copy.deepcopy(base)
    c.seed, c.objective.beta, c.optimizer.learning_rate = seed, beta, learning_rate
    out.append(c)
  return out


def _assert_close(a, b):
  jax.tree.map(
    lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6),
    jax.device_get(a),
    jax.device_get(b),
  )


def test_each_member_equals_its_separate_run_and_resumes(tmp_path, monkeypatch):
  # No PNGs: they cost seconds per run and member; tests/test_sweep.py sees members' figures.
  monkeypatch.setattr(figures, "save_training_curves", lambda *args, **kwargs: None)
  monkeypatch.setattr(train, "write_figures", lambda *args, **kwargs: {})
  separate = []
  for i, c in enumerate(_configs()):
    separate.append((tmp_path / f"s{i}", train.train_and_evaluate(c, str(tmp_path / f"s{i}"))))

  dirs = [tmp_path / f"m{i}" for i in range(len(MEMBERS))]
  group = train.train_population(_configs(), dirs)
  for i, (separate_dir, state) in enumerate(separate):
    assert int(group.step[i]) == int(state.step) == STEPS
    _assert_close(parallel.member(group.params, i), state.params)
    _assert_close(parallel.member(group.opt_state, i), state.opt_state)
    # The member's workdir is a trainer workdir: same config.json, files and metrics.
    assert (dirs[i] / "config.json").read_text() == (separate_dir / "config.json").read_text()
    assert {p.name for p in separate_dir.iterdir()} <= {p.name for p in dirs[i].iterdir()}
    ours = json.loads((dirs[i] / "final_metrics.json").read_text())
    theirs = json.loads((separate_dir / "final_metrics.json").read_text())
    assert ours.keys() == theirs.keys() and ours["step"] == STEPS
    for key in theirs:
      assert ours[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-5), key
    # And those of the version before the package was layered (tests/test_golden.py).
    assert_golden(ours, GOLDEN["group"][i])
    # aejax.load restores the member from its own checkpoint.
    loaded = aejax.load(dirs[i])
    assert loaded.step == STEPS
    _assert_close(loaded.params, state.params)

  # Interrupted by SIGTERM after the first chunk of steps, then resumed: the same parameters.
  real = steps.make_multi_step

  def make_chunk_that_signals(*args, **kwargs):
    chunk_fn = real(*args, **kwargs)

    def wrapped(*chunk_args):
      os.kill(os.getpid(), signal.SIGTERM)
      return chunk_fn(*chunk_args)

    return wrapped

  resumed_dirs = [tmp_path / f"r{i}" for i in range(len(MEMBERS))]
  monkeypatch.setattr(steps, "make_multi_step", make_chunk_that_signals)
  with pytest.raises(errors.TrainingInterrupted, match="after step 4") as info:
    train.train_population(_configs(), resumed_dirs)
  assert info.value.signum == signal.SIGTERM
  for d in resumed_dirs:
    assert (d / "checkpoints" / "4").is_dir() and not (d / "final_metrics.json").exists()
  monkeypatch.setattr(steps, "make_multi_step", real)
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

  resumed = train.train_population(_configs(), resumed_dirs)
  for i, (separate_dir, state) in enumerate(separate):
    _assert_close(parallel.member(resumed.params, i), state.params)
    logged = [r["step"] for r in metrics.read_metrics(resumed_dirs[i])]
    assert logged == [r["step"] for r in metrics.read_metrics(separate_dir)]
    assert (resumed_dirs[i] / "final_metrics.json").exists()


def test_members_must_differ_only_in_vmapped_fields():
  a, b = _configs()[:2]
  b.model.hidden_widths = (32,)
  with pytest.raises(errors.ConfigError, match=r"config\.model\.hidden_widths: member 1 has"):
    train.check_group([a, b])
  train.check_group(_configs())  # Seed, beta and learning rate may differ.
  b = _configs()[1]
  b.model.latent_dim, b.objective.name, b.objective.num_samples = 3, "iwae", 5
  train.check_group([a, b])  # And latent size, objective and k (padded: tests/test_padding.py).


def test_a_member_with_nonfinite_steps_stops_the_group_or_is_skipped_alone(tmp_path, monkeypatch):
  monkeypatch.setattr(figures, "save_training_curves", lambda *args, **kwargs: None)
  monkeypatch.setattr(train, "write_figures", lambda *args, **kwargs: {})

  def configs(nonfinite):
    # Plain SGD: member 0 trains normally, member 1's learning rate overflows the loss.
    out = []
    for seed, learning_rate in ((0, 1e-3), (1, 3e3)):
      c = tiny_digits_config(total_steps=32)
      c.seed, c.nonfinite = seed, nonfinite
      c.optimizer.name, c.optimizer.learning_rate = "sgd", learning_rate
      c.checkpoint_every_steps, c.steps_per_dispatch, c.final_figures = 2, 4, False
      out.append(c)
    return out

  stopped = [tmp_path / "stop0", tmp_path / "stop1"]
  with pytest.raises(errors.NonFiniteError) as info:
    train.train_population(configs("stop"), stopped)
  assert str(stopped[1]) in str(info.value) and f"at step {info.value.step}" in str(info.value)

  skipped = [tmp_path / "skip0", tmp_path / "skip1"]
  group = train.train_population(configs("skip"), skipped)
  assert [int(s) for s in group.step] == [32, 32]
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(group.params)))
  counts = []
  for d in skipped:
    records = [r for r in metrics.read_metrics(d) if "train/skipped_steps" in r]
    counts.append(records[-1]["train/skipped_steps"] if records else 0)
  assert counts[0] == 0 and counts[1] > 0, counts
