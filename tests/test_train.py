"""Tests for aejax/train.py: sharded == single-device, checkpoints, resume, the data pipeline."""

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aejax import configs, metric_writer, models, optim, train


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
    mesh = train.make_mesh(devices)
    state = train.create_train_state(model, tx, (8, 8, 1), jax.random.key(1), mesh)
    step = train.make_train_step(model, tx, c, mesh)
    sharded_batch = jax.device_put(batch, train.batch_sharded(mesh))
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
  mesh = train.make_mesh()
  n = 64
  images = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1) * np.ones((1, 8, 8, 1), np.float32)
  keys = train.derived_keys(0)
  batch_fn = train.make_train_batch_fn(c, mesh, n, keys)
  images_dev = train.put_replicated(images, mesh)
  seen = [np.asarray(batch_fn(images_dev, None, s)["input"][:, 0, 0, 0]) for s in range(2)]
  np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(n))
  batch = batch_fn(images_dev, None, 0)
  assert batch["input"].sharding.is_equivalent_to(train.batch_sharded(mesh), 4)
  # The next epoch is a different order; the same step is always the same batch.
  np.testing.assert_array_equal(
    np.asarray(batch_fn(images_dev, None, 1)["input"][:, 0, 0, 0]), seen[1]
  )
  assert not np.array_equal(np.asarray(batch_fn(images_dev, None, 2)["input"][:, 0, 0, 0]), seen[0])


def test_checkpoint_round_trip(tmp_path):
  c = _tiny_vae_config()
  model = models.build_model(c.model, (8, 8, 1))
  tx = optim.make_optimizer(c.optimizer, 10)
  mesh = train.make_mesh()
  state = train.create_train_state(model, tx, (8, 8, 1), jax.random.key(3), mesh)
  state = state.replace(step=jnp.asarray(7, jnp.int32))
  manager = train.checkpoint_manager(tmp_path, keep=2)
  manager.save(7, args=train.ocp.args.StandardSave(state))
  manager.wait_until_finished()
  fresh = train.create_train_state(model, tx, (8, 8, 1), jax.random.key(4), mesh)
  restored = train.restore_latest(train.checkpoint_manager(tmp_path, keep=2), fresh)
  assert int(restored.step) == 7
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), jax.device_get(state))
  leaf = jax.tree.leaves(restored.params)[0]
  assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 8


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, monkeypatch):
  c = _tiny_vae_config()
  c.checkpoint_every_steps = 100  # Only the forced save at the interruption.
  full = train.train_and_evaluate(c, str(tmp_path / "full"))

  # Second run: SIGTERM arrives during step 6; the trainer saves and stops.
  real_make_train_step = train.make_train_step

  def make_step_that_signals(*args, **kwargs):
    step_fn = real_make_train_step(*args, **kwargs)
    calls = {"n": 0}

    def wrapped(state, batch, key):
      calls["n"] += 1
      if calls["n"] == 6:
        os.kill(os.getpid(), signal.SIGTERM)
      return step_fn(state, batch, key)

    return wrapped

  monkeypatch.setattr(train, "make_train_step", make_step_that_signals)
  with pytest.raises(train.TrainingInterrupted, match="after step 6") as info:
    train.train_and_evaluate(c, str(tmp_path / "resumed"))
  assert info.value.step == 6
  assert (tmp_path / "resumed" / "checkpoints" / "6").is_dir()
  monkeypatch.setattr(train, "make_train_step", real_make_train_step)
  # The SIGTERM handler is gone again after the run.
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

  resumed = train.train_and_evaluate(c, str(tmp_path / "resumed"))
  assert int(resumed.step) == int(full.step) == c.total_steps
  jax.tree.map(
    np.testing.assert_array_equal, jax.device_get(resumed.params), jax.device_get(full.params)
  )
  # metrics.jsonl holds each step once, as if the run had never stopped.
  steps_full = [r["step"] for r in metric_writer.read_metrics(tmp_path / "full")]
  steps_resumed = [r["step"] for r in metric_writer.read_metrics(tmp_path / "resumed")]
  assert steps_resumed == steps_full


def test_workdir_outputs(tmp_path):
  c = _tiny_vae_config()
  train.train_and_evaluate(c, str(tmp_path))
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["model"]["name"] == "dense_vae" and saved["total_steps"] == 16
  records = metric_writer.read_metrics(tmp_path)
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
