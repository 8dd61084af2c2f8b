"""The model zoo end to end: every model trains from its experiment file, stops,
resumes (to the very parameters of an uninterrupted run where the model brings checkpoint
structure of its own), loads with aejax.load and evaluates.

Each model's loss terms are tested against independent computations in its own file
(tests/test_zoo_*.py); this file tests what the contract promises every one of them.
"""

import json
import logging
import math
import pathlib

import jax
import numpy as np
import pytest
from test_experiments import ZOO_EXPERIMENTS, load_experiment

import aejax
from aejax import configs, evaluate, main, models, steps, sweep, sweep_grid, train

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_every_zoo_model_has_an_experiment_a_readme_line_and_a_docs_row():
  assert {p.stem for p in ZOO_EXPERIMENTS} == set(models.ZOO)
  readme = (ROOT / "README.md").read_text()
  zoo_doc = (ROOT / "docs" / "zoo.md").read_text()
  for name in models.ZOO:
    assert f"`{name}`" in readme, f"README.md does not list {name}"
    assert f"`{name}`" in zoo_doc, f"docs/zoo.md does not list {name}"


def test_the_zoo_table_runs_every_zoo_model_but_the_disentanglement_family():
  assert set(models.DISENTANGLEMENT_FAMILY) <= set(models.ZOO)
  names = []
  load_experiment(ROOT / "experiments" / "zoo_table.py").sweep(
    lambda **overrides: names.append(overrides["model.name"])
  )
  expected = set(models.ZOO) - set(models.DISENTANGLEMENT_FAMILY) - set(models.SEQUENCE_FAMILY)
  expected |= {"dense_ae", "dense_vae"}
  assert sorted(names) == sorted(expected)


# The image models; the sequence family's run end to end is tests/test_melodies.py.
IMAGE_ZOO_EXPERIMENTS = [p for p in ZOO_EXPERIMENTS if p.stem not in models.SEQUENCE_FAMILY]


@pytest.mark.parametrize("path", IMAGE_ZOO_EXPERIMENTS, ids=lambda p: p.stem)
def test_zoo_model_trains_resumes_exactly_loads_and_evaluates(path, tmp_path, data_dir, caplog):
  config = load_experiment(path).get_config("tiny")
  config.data.data_dir = str(data_dir)
  total = config.total_steps
  stopped, straight = tmp_path / "stopped", tmp_path / "straight"

  # Stopped at its first checkpoint (as a killed run restarts from it), then resumed and
  # finished with the CLI's final figures. In this process: a CLI process per model would
  # spend most of its time starting JAX (tests/test_reliability.py kills real processes, and
  # tests/test_experiments.py runs experiment files through the CLI).
  first = config.copy_and_resolve_references()
  first.total_steps = config.checkpoint_every_steps
  train.train_and_evaluate(first, str(stopped))
  with caplog.at_level(logging.INFO):
    main.train_then_finalize(config, str(stopped))
  assert f"Resumed from the checkpoint at step {config.checkpoint_every_steps}" in caplog.text
  model = aejax.load(stopped)
  assert model.step == total
  if steps.param_groups(model.model) or steps.state_groups(model.model):
    # A critic's own optimizer state or a state group (an EMA codebook) is checkpoint structure
    # of the model's own: resuming must replay the uninterrupted run exactly. (For the other
    # models the checkpoint holds what it holds for every model, and tests/test_train.py and
    # tests/test_reliability.py pin exact resumption down; a second run here would only double
    # this test's time.)
    train.train_and_evaluate(config, str(straight))
    reference = aejax.load(straight)
    leaves = jax.tree.leaves_with_path(model.params)
    assert len(leaves) == len(jax.tree.leaves(reference.params))
    for (where, got), want in zip(leaves, jax.tree.leaves(reference.params), strict=True):
      np.testing.assert_allclose(
        got, want, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(where)
      )
  final = json.loads((stopped / "final_metrics.json").read_text())
  assert math.isfinite(final["eval/loss"]), final

  images = np.linspace(0.0, 1.0, 8 * 28 * 28, dtype=np.float32).reshape(8, 28, 28, 1)
  reconstructions = model.reconstruct(images)
  assert reconstructions.shape == images.shape and np.all(np.isfinite(reconstructions))
  if model.can_generate:
    samples = model.generate(6, seed=1)
    assert samples.shape == (6, 28, 28, 1)
    assert samples.min() >= 0.0 and samples.max() <= 1.0
    np.testing.assert_array_equal(samples, model.generate(6, seed=1))
    assert (stopped / "samples.png").is_file()

  results = evaluate.evaluate(stopped, nll_samples=4, limit=32, probe_train_size=64, fid=False)
  assert math.isfinite(results["recon"]) and math.isfinite(results["psnr"])
  assert math.isfinite(results["linear_probe_accuracy"])
  if model.is_variational:
    assert math.isfinite(results["nll"]) and set(results["iwae_bound_k"]) == {"1", "4"}
    # -L_k is an upper bound on the NLL that tightens with k only in expectation; over 32
    # images it must at least be of the same size as the ELBO.
    assert results["nll"] == pytest.approx(-results["elbo"], rel=0.5)


def test_the_disentanglement_study_runs_the_family_over_its_grids_in_populations(tmp_path):
  module = load_experiment(ROOT / "experiments" / "disentanglement_study.py")
  full = sweep_grid.from_sweep_fn(module.sweep, None)
  assert {o["model.name"] for o in full} == set(models.DISENTANGLEMENT_FAMILY)
  assert len(full) == 6 * 6  # Locatello et al.'s six models, six values each.
  gammas = [o["model.options.gamma"] for o in full if o["model.name"] == "factor_vae"]
  assert gammas == [10.0, 20.0, 30.0, 40.0, 50.0, 100.0]
  small = sweep_grid.expand(module.sweep, "tiny", seeds=[0, 1])
  runs = sweep_grid.make_runs(module.get_config("tiny"), small, tmp_path)
  assert len(runs) == 6 * 2 * 2
  for run in runs:
    configs.validate(run.config, num_devices=8)
    # Every model accepts its options from the sweep (a bad one is a ConfigError here).
    models.build_model(run.config.model, (64, 64, 1))
  annealed = [r for r in runs if r.config.model.name == "annealed_vae"]
  assert {r.config.model.options.c_max for r in annealed} == {5.0, 100.0}
  assert all(r.config.objective.kl_warmup_steps == 5 for r in annealed)  # A third of 16.
  # Seeds and the KL weight vmap: beta_vae's two betas x two seeds are one program.
  jobs = sweep.plan_jobs(runs, vmap_seeds=True, max_group=8)
  assert sorted(len(j) for j in jobs) == [2] * 8 + [4] * 2
