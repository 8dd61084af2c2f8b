"""Tests for aejax/train.py: sharded == single-device, checkpoints, resume, the data pipeline."""

import collections
import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aejax import (
  api,
  checkpoint,
  configs,
  data,
  distributed,
  dsprites,
  errors,
  metrics,
  models,
  optim,
  parallel,
  steps,
  train,
)


def _tiny_vae_config():
  c = configs.default_config()
  c.data.name = "digits"
  c.model.name = "dense_vae"
  c.model.latent_dim = 2
  c.model.hidden_widths = (32,)
  c.objective.kl_warmup_steps = 4
  return configs.make_tiny(c)


def test_sharded_step_equals_single_device_step():
  assert jax.device_count() == 8, "conftest.py must create 8 fake CPU devices"
  c = _tiny_vae_config()
  model = models.build_model(c.model, (8, 8, 1))
  tx = optim.make_optimizer(c.optimizer, 10)
  x = jax.random.uniform(jax.random.key(0), (32, 8, 8, 1))
  batch = {"input": x, "target": x}
  results = {}
  for name, devices in (("single", jax.devices()[:1]), ("sharded", jax.devices())):
    mesh = parallel.make_mesh(devices)
    state = steps.create_train_state(model, tx, (8, 8, 1), jax.random.key(1), mesh)
    step = steps.make_train_step(model, tx, c, mesh)
    sharded_batch = jax.device_put(batch, parallel.batch_sharded(mesh))
    assert len(sharded_batch["input"].sharding.device_set) == len(devices)
    for i in range(3):
      state, metrics = step(state, sharded_batch, jax.random.key(i))
    results[name] = (jax.device_get(state.params), jax.device_get(metrics))
  (p1, m1), (p8, m8) = results["single"], results["sharded"]
  for key in m1:
    np.testing.assert_allclose(m1[key], m8[key], rtol=1e-5, atol=1e-6, err_msg=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), p1, p8)


def test_train_batches_cover_each_epoch_once_and_are_sharded():
  c = _tiny_vae_config()
  mesh = parallel.make_mesh()
  n = 64
  images = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1) * np.ones((1, 8, 8, 1), np.float32)
  keys = steps.derived_keys(0)
  batch_fn = steps.make_train_batch_fn(c, mesh, n, keys)
  images_dev = parallel.put_replicated(images, mesh)
  seen = [np.asarray(batch_fn(images_dev, None, s)["input"][:, 0, 0, 0]) for s in range(2)]
  np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(n))
  batch = batch_fn(images_dev, None, 0)
  assert batch["input"].sharding.is_equivalent_to(parallel.batch_sharded(mesh), 4)
  # The next epoch is a different order; the same step is always the same batch.
  np.testing.assert_array_equal(
    np.asarray(batch_fn(images_dev, None, 1)["input"][:, 0, 0, 0]), seen[1]
  )
  assert not np.array_equal(np.asarray(batch_fn(images_dev, None, 2)["input"][:, 0, 0, 0]), seen[0])


def test_checkpoint_round_trip(tmp_path):
  c = _tiny_vae_config()
  model = models.build_model(c.model, (8, 8, 1))
  tx = optim.make_optimizer(c.optimizer, 10)
  mesh = parallel.make_mesh()
  state = steps.create_train_state(model, tx, (8, 8, 1), jax.random.key(3), mesh)
  state = state.replace(step=jnp.asarray(7, jnp.int32))
  manager = checkpoint.checkpoint_manager(tmp_path, keep=2)
  manager.save(7, args=checkpoint.ocp.args.StandardSave(state))
  manager.wait_until_finished()
  fresh = steps.create_train_state(model, tx, (8, 8, 1), jax.random.key(4), mesh)
  restored = checkpoint.restore_latest(checkpoint.checkpoint_manager(tmp_path, keep=2), fresh)
  assert int(restored.step) == 7
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), jax.device_get(state))
  leaf = jax.tree.leaves(restored.params)[0]
  assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 8


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, monkeypatch):
  c = _tiny_vae_config()
  c.checkpoint_every_steps = 100  # Only the forced save at the interruption.
  full = train.train_and_evaluate(c, str(tmp_path / "full"))

  # Second run: SIGTERM arrives during the dispatch that ends at step 6; the trainer saves and
  # stops. Dispatches of 2 steps: the signal is handled between dispatches.
  c.steps_per_dispatch = 2
  real_make_multi_step = steps.make_multi_step

  def make_step_that_signals(*args, **kwargs):
    step_fn = real_make_multi_step(*args, **kwargs)
    calls = {"n": 0}

    def wrapped(*step_args):
      calls["n"] += 1
      if calls["n"] == 3:
        os.kill(os.getpid(), signal.SIGTERM)
      return step_fn(*step_args)

    return wrapped

  monkeypatch.setattr(steps, "make_multi_step", make_step_that_signals)
  with pytest.raises(errors.TrainingInterrupted, match="after step 6") as info:
    train.train_and_evaluate(c, str(tmp_path / "resumed"))
  assert info.value.step == 6
  assert (tmp_path / "resumed" / "checkpoints" / "6").is_dir()
  monkeypatch.setattr(steps, "make_multi_step", real_make_multi_step)
  # The SIGTERM handler is gone again after the run.
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

  resumed = train.train_and_evaluate(c, str(tmp_path / "resumed"))
  assert int(resumed.step) == int(full.step) == c.total_steps
  jax.tree.map(
    np.testing.assert_array_equal, jax.device_get(resumed.params), jax.device_get(full.params)
  )
  # metrics.jsonl holds each step once, as if the run had never stopped.
  steps_full = [r["step"] for r in metrics.read_metrics(tmp_path / "full")]
  steps_resumed = [r["step"] for r in metrics.read_metrics(tmp_path / "resumed")]
  assert steps_resumed == steps_full

  # Killed after its final checkpoint but before the summary: a rerun trains nothing and writes
  # final_metrics.json (what sweeps read as "finished"), equal to the uninterrupted run's.
  final = tmp_path / "resumed" / "final_metrics.json"
  expected = json.loads(final.read_text())
  final.unlink()
  train.train_and_evaluate(c, str(tmp_path / "resumed"))
  assert json.loads(final.read_text()) == expected
  assert [r["step"] for r in metrics.read_metrics(tmp_path / "resumed")] == steps_full


def test_a_signal_at_an_evaluation_step_saves_the_checkpoint_before_evaluating(
  tmp_path, monkeypatch
):
  c = _tiny_vae_config()
  c.steps_per_dispatch = 2
  c.eval_every_steps = 6
  c.checkpoint_every_steps = 100
  calls = []
  for name in ("evaluate", "checkpoint"):
    real = getattr(train.Population, name)

    def record(self, step, *args, real=real, name=name, **kwargs):
      calls.append((name, step))
      return real(self, step, *args, **kwargs)

    monkeypatch.setattr(train.Population, name, record)
  real_make_multi_step = steps.make_multi_step

  def make_step_that_signals(*args, **kwargs):
    step_fn = real_make_multi_step(*args, **kwargs)
    count = {"n": 0}

    def wrapped(*step_args):
      count["n"] += 1
      if count["n"] == 3:  # The dispatch that ends at step 6, an evaluation step.
        os.kill(os.getpid(), signal.SIGTERM)
      return step_fn(*step_args)

    return wrapped

  monkeypatch.setattr(steps, "make_multi_step", make_step_that_signals)
  with pytest.raises(errors.TrainingInterrupted, match="after step 6"):
    train.train_and_evaluate(c, str(tmp_path / "run"))
  # A preempted host may have seconds left: the checkpoint first, then the evaluation.
  assert calls == [("checkpoint", 6), ("evaluate", 6)]


def test_a_signal_arriving_after_the_processes_agreed_stops_at_the_next_agreement(
  tmp_path, monkeypatch
):
  """All processes act on the agreed stop only: a signal that lands in one process just after
  the agreement (here: right after the second one) is shared at the next, one dispatch later;
  acting on it at once would send that process into a checkpoint the others never join."""
  c = _tiny_vae_config()
  c.steps_per_dispatch = 2
  c.checkpoint_every_steps = 100
  real_any_process = distributed.any_process
  calls = {"n": 0}

  def any_process_then_signal(flag):
    agreed = real_any_process(flag)
    calls["n"] += 1
    if calls["n"] == 2:  # After the agreement at step 4.
      os.kill(os.getpid(), signal.SIGTERM)
    return agreed

  monkeypatch.setattr(distributed, "any_process", any_process_then_signal)
  with pytest.raises(errors.TrainingInterrupted, match="after step 6") as info:
    train.train_and_evaluate(c, str(tmp_path / "run"))
  assert info.value.signum == signal.SIGTERM
  assert (tmp_path / "run" / "checkpoints" / "6").is_dir()


def test_runs_that_differ_in_seed_beta_and_learning_rate_compile_the_step_once(
  tmp_path, monkeypatch
):
  monkeypatch.setattr(train, "_programs", collections.OrderedDict())
  c = _tiny_vae_config()
  c.total_steps = c.checkpoint_every_steps = c.eval_every_steps = 4
  first = train.train_and_evaluate(c, str(tmp_path / "first"))

  def compiled():
    """Each program's compilations (make_figure_fns builds a dict of programs). jax.jit objects
    of one module-level function with equal options share their cache (the permutation's
    counts every run of this process), so the test compares counts before and after."""
    return {
      f"{build.__qualname__} {name}": fn._cache_size()
      for build, _, _, program in train._programs.values()
      for name, fn in (program.items() if isinstance(program, dict) else [("", program)])
    }

  after_first = compiled()
  c.seed, c.objective.beta, c.optimizer.learning_rate = 1, 2.0, 3e-3
  second = train.train_and_evaluate(c, str(tmp_path / "second"))
  assert not np.array_equal(
    jax.tree.leaves(jax.device_get(first.params))[0],
    jax.tree.leaves(jax.device_get(second.params))[0],
  )
  built = [entry[0] for entry in train._programs.values()]
  assert built.count(steps.make_multi_step) == 1 and built.count(steps.make_eval_fn) == 1
  # The second run compiled nothing: every program it ran was the first run's.
  assert compiled() == after_first
  # The step and the evaluation (closures of this run, with caches of their own): once.
  assert compiled()["make_multi_step "] == compiled()["make_eval_fn "] == 1
  # Another batch size is another program.
  c.batch_size *= 2
  train.train_and_evaluate(c, str(tmp_path / "third"))
  built = [entry[0] for entry in train._programs.values()]
  assert built.count(steps.make_multi_step) == 2


def test_workdir_outputs(tmp_path):
  c = _tiny_vae_config()
  train.train_and_evaluate(c, str(tmp_path))
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["model"]["name"] == "dense_vae" and saved["total_steps"] == 16
  records = metrics.read_metrics(tmp_path)
  train_records = [r for r in records if "train/loss" in r]
  eval_records = [r for r in records if "eval/loss" in r]
  assert [r["step"] for r in train_records] == [4, 8, 12, 16]
  assert [r["step"] for r in eval_records] == [8, 16]
  last = eval_records[-1]
  for key in (
    "eval/loss",
    "eval/neg_elbo",
    "eval/recon",
    "eval/kl",
    "eval/bce_per_pixel",
    "eval/mse_per_pixel",
    "eval/psnr",
  ):
    assert np.isfinite(last[key]), key
  # beta = 1: the objective on the eval split is the negative ELBO.
  assert last["eval/loss"] == pytest.approx(last["eval/neg_elbo"])
  assert last["eval/neg_elbo"] == pytest.approx(last["eval/recon"] + last["eval/kl"], rel=1e-5)
  # The KL warm-up reaches beta after kl_warmup_steps.
  assert train_records[0]["train/kl_weight"] < 1.0 and train_records[-1]["train/kl_weight"] == 1.0
  for name in ("reconstructions.png", "samples.png", "curves.png"):
    assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [
    "16",
    "8",
  ]
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_fused_steps_equal_single_steps_and_compile_once():
  """K steps in one dispatch == K one-step dispatches; chunk lengths never recompile."""
  c = _tiny_vae_config()
  c.data.dynamic_binarization = True  # Exercise the in-jit batch corruption too.
  model = models.build_model(c.model, (8, 8, 1))
  tx = optim.make_optimizer(c.optimizer, 16)
  mesh = parallel.make_mesh()
  keys = steps.derived_keys(0)
  n = 320  # 10 steps per epoch.
  images = parallel.put_replicated(
    np.random.default_rng(0).uniform(size=(n, 8, 8, 1)).astype(np.float32), mesh
  )
  fresh = lambda: steps.create_train_state(model, tx, (8, 8, 1), keys["init"], mesh)  # noqa: E731

  single = fresh()
  batch_fn = steps.make_train_batch_fn(c, mesh, n, keys)
  step_fn = steps.make_train_step(model, tx, c, mesh)
  losses = []
  for s in range(10):
    single, metrics = step_fn(
      single, batch_fn(images, None, s), jax.random.fold_in(keys["step"], s)
    )
    losses.append(float(metrics["loss"]))

  multi_step = steps.make_multi_step(model, c, mesh, n, total_steps=16, steps_per_epoch=10)
  hp = {k: jnp.float32(v) for k, v in steps.hparams(c).items()}
  fused = fresh()
  totals = []
  perm = steps.epoch_permutation(keys, n, 0)
  for num_steps in (3, 5, 2):  # Three chunk lengths in the epoch of 10 steps, one compilation.
    fused, sums = multi_step(fused, images, None, perm, num_steps, keys, hp)
    totals.append(float(sums["loss"]))
    assert int(sums["steps"]) == num_steps and int(sums["first_nonfinite_step"]) == -1
  assert multi_step._cache_size() == 1
  assert int(fused.step) == int(single.step) == 10
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
    jax.device_get(fused.params),
    jax.device_get(single.params),
  )
  np.testing.assert_allclose(
    totals, [sum(losses[:3]), sum(losses[3:8]), sum(losses[8:])], rtol=1e-5
  )


def _exploding_config():
  """Plain SGD at a huge learning rate: finite for a few steps, then the loss overflows."""
  c = _tiny_vae_config()
  c.optimizer.name, c.optimizer.learning_rate = "sgd", 3e3
  c.total_steps, c.checkpoint_every_steps, c.steps_per_dispatch = 64, 2, 4
  c.objective.kl_warmup_steps = 0
  c.final_figures = False
  return c


def test_nonfinite_step_stops_the_run_without_saving_nan(tmp_path):
  c = _exploding_config()
  with pytest.raises(errors.NonFiniteError) as info:
    train.train_and_evaluate(c, str(tmp_path))
  error = info.value
  assert f"at step {error.step}" in str(error) and "train/" in str(error)
  saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert saved and error.last_checkpoint == saved[-1] <= error.step
  assert f"checkpoint is step {saved[-1]}" in str(error)

  for step in saved:
    params = api.load(tmp_path, step=step).params
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params)), step


def test_nonfinite_steps_can_be_skipped_and_counted(tmp_path):
  c = _exploding_config()
  c.nonfinite = "skip"
  state = train.train_and_evaluate(c, str(tmp_path))
  assert int(state.step) == c.total_steps
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(state.params)))
  records = [r for r in metrics.read_metrics(tmp_path) if "train/skipped_steps" in r]
  assert records[-1]["train/skipped_steps"] > 0


def test_workdir_with_another_config_is_refused_with_a_diff(tmp_path):
  c = _tiny_vae_config()
  c.total_steps = c.checkpoint_every_steps = c.eval_every_steps = 4
  train.train_and_evaluate(c, str(tmp_path))
  changed = _tiny_vae_config()
  changed.total_steps = changed.checkpoint_every_steps = changed.eval_every_steps = 8
  changed.model.latent_dim = 3
  changed.optimizer.learning_rate = 0.01
  with pytest.raises(errors.ConfigError) as info:
    train.train_and_evaluate(changed, str(tmp_path))
  message = str(info.value)
  assert "config.model.latent_dim: 2 -> 3" in message
  assert "config.optimizer.learning_rate: 0.001 -> 0.01" in message
  assert "total_steps" not in message  # Extending a run is not a config change.
  assert json.loads((tmp_path / "config.json").read_text())["model"]["latent_dim"] == 2
  # Only a resumable field changed: the run goes on from its checkpoint to step 8.
  longer = _tiny_vae_config()
  longer.total_steps = longer.checkpoint_every_steps = longer.eval_every_steps = 8
  assert int(train.train_and_evaluate(longer, str(tmp_path)).step) == 8
  # An explicit override resumes anyway and the saved config becomes the new one.
  faster = _tiny_vae_config()
  faster.total_steps = faster.checkpoint_every_steps = faster.eval_every_steps = 12
  faster.optimizer.learning_rate = 0.01
  assert int(train.train_and_evaluate(faster, str(tmp_path), allow_config_change=True).step) == 12
  assert json.loads((tmp_path / "config.json").read_text())["optimizer"]["learning_rate"] == 0.01


def test_rendered_data_is_drawn_in_the_step_from_the_cut_factors():
  c = _tiny_vae_config()
  mesh = parallel.make_mesh()
  factors = data.rendered_factors(dsprites.NoisyDSprites(), "train")[:64]
  train_set = data.RenderedSet(
    factors=factors, labels=factors[:, 0], data_set=dsprites.NoisyDSprites(), name="noisy_dsprites",
    split="train",
  )  # fmt: skip
  keys = steps.derived_keys(0)
  batch_fn = steps.make_train_batch_fn(c, mesh, 64, keys, render=train_set.render)
  # Factor rows tagged by position: the batch's images must be those of the rows it cut.
  perm = steps.epoch_permutation(keys, 64, 0)
  batch = batch_fn(parallel.put_replicated(factors, mesh), None, 1)
  rows = factors[np.asarray(perm[c.batch_size : 2 * c.batch_size])]
  noise_key = jax.random.fold_in(keys["render"], 1)
  want = dsprites.render_noisy(rows, noise_key)
  np.testing.assert_array_equal(np.asarray(batch["input"]), np.asarray(want))
  # The nuisance changes with the step; the sprite masks do not depend on it.
  other = dsprites.render_noisy(rows, jax.random.fold_in(keys["render"], 2))
  assert not np.array_equal(np.asarray(other), np.asarray(want))


def test_8_bit_images_are_kept_as_uint8_and_batched_bit_for_bit_as_float32(data_dir):
  mnist = data.load("mnist", "test", limit=256, data_dir=str(data_dir))
  assert mnist.stored.dtype == np.uint8 and mnist.stored.nbytes * 4 == mnist.images.nbytes
  digits = data.load("digits", "train")  # Levels of 16, not of 255: float32 as loaded.
  assert digits.stored is digits.images and digits.render is None
  c = _tiny_vae_config()
  c.data.dynamic_binarization = False
  mesh = parallel.make_mesh()
  keys = steps.derived_keys(0)
  as_levels = steps.make_train_batch_fn(c, mesh, 256, keys, render=mnist.render)
  as_floats = steps.make_train_batch_fn(c, mesh, 256, keys)
  for step in (0, 3, 9):
    levels = as_levels(parallel.put_replicated(mnist.stored, mesh), None, step)
    floats = as_floats(parallel.put_replicated(mnist.images, mesh), None, step)
    assert np.array_equal(np.asarray(levels["input"]), np.asarray(floats["input"]))
