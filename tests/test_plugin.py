"""The model contract from outside the package: a plug-in with a critic, and the trust boundary.

tests/plugins/adversarial_ae.py is a model family aejax has never seen: an
adversarial autoencoder whose critic is a second parameter group with its own
optimizer state. It trains through the CLI by import path, resumes after
kill -9 and loads with aejax.load. tests/plugins/leaves_a_mark.py writes a file
when imported: loading a workdir that names it must not import it.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_digits_config

import aejax
from aejax import configs, errors, models, objectives, parallel, steps

PLUGINS = os.path.join(os.path.dirname(__file__), "plugins")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "workdir_before_layers")


def _env(**extra):
  path = os.pathsep.join(p for p in (PLUGINS, os.environ.get("PYTHONPATH")) if p)
  return {**os.environ, "PYTHONPATH": path, **extra}


def _adversarial_config():
  c = tiny_digits_config(total_steps=4)
  c.model.name = "adversarial_ae:build"
  c.model.latent_dim = 2
  return c


def test_each_parameter_group_descends_its_own_loss(monkeypatch):
  monkeypatch.syspath_prepend(PLUGINS)
  c = _adversarial_config()
  model = models.build_model(c.model, (8, 8, 1), trust_model_code=True)
  assert model.extra_param_groups == ("critic",)
  tx = steps.make_optimizer(model, c, 4, 1)
  state = steps.create_train_state(model, tx, (8, 8, 1), jax.random.key(0), parallel.make_mesh())
  # Two optimizer states: the critic's Adam moments are its own.
  assert set(state.params) == {"encoder", "decoder", "critic"}
  x = jax.random.uniform(jax.random.key(1), (16, 8, 8, 1))
  batch, key = {"input": x, "target": x}, jax.random.key(2)

  grads, metrics, _ = steps._grads_and_metrics(state, batch, key, 1.0, model=model, config=c)

  def mean_term(params, name):
    return objectives.per_image_losses(model, params, batch, key, c, jnp.float32(1.0))[name].mean()

  want_model = jax.grad(mean_term)(state.params, "loss")
  want_critic = jax.grad(mean_term)(state.params, "loss_critic")
  for part in ("encoder", "decoder"):
    jax.tree.map(np.testing.assert_allclose, grads[part], want_model[part])
  jax.tree.map(np.testing.assert_allclose, grads["critic"], want_critic["critic"])
  # The critic's own gradient is not the autoencoder's: the players pull different ways.
  assert not np.allclose(
    jax.tree.leaves(want_model["critic"])[0], jax.tree.leaves(want_critic["critic"])[0]
  )
  assert {"loss", "loss_critic", "adversarial", "recon"} <= set(metrics)

  # A group without its loss term is a clear error, not a KeyError inside a trace.
  class NoCriticLoss(type(model)):
    def losses(self, batch, key, config, kl_weight):
      terms = super().losses(batch, key, config, kl_weight)
      del terms["loss_critic"]
      return terms

  broken = NoCriticLoss(model.latent_dim, model.output_shape)
  with pytest.raises(errors.ConfigError, match="returns no 'loss_critic' term"):
    steps._grads_and_metrics(state, batch, key, 1.0, model=broken, config=c)


def test_a_state_group_takes_update_state_and_no_gradient(monkeypatch):
  """A state group (an EMA codebook's kind) is replaced by update_state on the step's batch;
  its gradient is dropped, it holds no optimizer state, and a non-finite step keeps it."""
  monkeypatch.syspath_prepend(PLUGINS)
  c = tiny_digits_config(total_steps=4)
  c.model.name, c.model.latent_dim = "running_mean_ae:build", 2
  model = models.build_model(c.model, (8, 8, 1), trust_model_code=True)
  tx = steps.make_optimizer(model, c, 4, 1)
  state = steps.create_train_state(model, tx, (8, 8, 1), jax.random.key(0), parallel.make_mesh())
  assert float(state.params["running"]["mean"]) == 0.0
  moments = jax.tree.leaves(state.opt_state)
  assert sum(x.size for x in moments) < 3 * steps.count_params(state.params)  # Adam: 2 per param.
  key = jax.random.key(2)
  want = 0.0
  for i in range(3):
    x = jax.random.uniform(jax.random.fold_in(key, i), (16, 8, 8, 1))
    before = state.params
    state, metrics = steps.train_step(state, {"input": x, "target": x}, key, model=model, tx=tx,
                                      config=c)  # fmt: skip
    want = 0.9 * want + 0.1 * float(np.mean(np.asarray(x)))
    np.testing.assert_allclose(float(state.params["running"]["mean"]), want, rtol=1e-6)
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), before, state.params))
    assert max(float(m) for m in moved) > 0  # The encoder and decoder still train.
  # A non-finite batch skips the whole update, the state group's included.
  nan = jnp.full((16, 8, 8, 1), jnp.nan)
  kept, _, finite, _ = steps.guarded_train_step(
    state, {"input": nan, "target": nan}, key, steps.hparams(c), model=model, tx=tx, config=c
  )
  assert not bool(finite)
  np.testing.assert_allclose(float(kept.params["running"]["mean"]), want, rtol=1e-6)

  class WrongGroups(type(model)):
    def update_state(self, batch, key, config):
      return {"elsewhere": {}}

  broken = WrongGroups(model.latent_dim, model.output_shape)
  x = jnp.zeros((16, 8, 8, 1))
  with pytest.raises(errors.ConfigError, match="declares the state groups"):
    steps._grads_and_metrics(state, {"input": x, "target": x}, key, 1.0, model=broken, config=c)


def _train_cli(workdir, **popen):
  args = [
    sys.executable, "-m", "aejax.main", "--config=experiments/quickstart.py:tiny",
    f"--workdir={workdir}", "--config.model.name=adversarial_ae:build",
    "--config.model.hidden_widths=32", "--config.total_steps=200",
    "--config.checkpoint_every_steps=20", "--config.eval_every_steps=100",
    "--config.log_every_steps=50", "--config.steps_per_dispatch=10",
  ]  # fmt: skip
  return subprocess.Popen(
    args, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen
  )


def test_a_plugin_trains_by_import_path_resumes_after_kill_and_loads(tmp_path, monkeypatch):
  workdir = tmp_path / "aae"
  first = _train_cli(workdir)
  deadline = time.time() + 240
  while not (workdir / "checkpoints" / "20").is_dir():
    assert first.poll() is None, first.communicate()[1][-3000:]
    assert time.time() < deadline, "no checkpoint within 240 s"
    time.sleep(0.05)
  first.send_signal(signal.SIGKILL)
  first.communicate()
  killed_at = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert killed_at < 200

  second = _train_cli(workdir)
  _, stderr = second.communicate(timeout=300)
  assert second.returncode == 0, stderr[-3000:]
  assert "Resumed from the checkpoint at step" in stderr
  final = json.loads((workdir / "final_metrics.json").read_text())
  assert final["step"] == 200 and np.isfinite(final["eval/loss_critic"])
  assert (workdir / "latent_grid.png").exists()  # Finalized like any 2-D model.

  monkeypatch.syspath_prepend(PLUGINS)
  loaded = aejax.load(workdir, trust_model_code=True)
  assert loaded.step == 200 and set(loaded.params) == {"encoder", "decoder", "critic"}
  digits = np.random.default_rng(0).uniform(size=(5, 8, 8, 1)).astype(np.float32)
  assert loaded.encode(digits).shape == (5, 2)
  assert loaded.decode(np.zeros((3, 2), np.float32)).shape == (3, 8, 8, 1)


def test_loading_a_workdir_never_imports_a_model_module_it_was_not_told_to(tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(FIXTURE, workdir)
  config = json.loads((workdir / "config.json").read_text())
  config["model"]["name"] = "leaves_a_mark:build"
  (workdir / "config.json").write_text(json.dumps(config))
  mark = tmp_path / "mark"
  env = _env(AEJAX_TEST_MARK=str(mark))

  loading = subprocess.run(
    [sys.executable, "-c", f"import aejax; aejax.load({str(workdir)!r})"],
    cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
  )  # fmt: skip
  assert loading.returncode != 0
  assert "ConfigError" in loading.stderr and "trust_model_code" in loading.stderr
  assert "'leaves_a_mark'" in loading.stderr
  used = subprocess.run(
    [sys.executable, "-m", "aejax.use", "encode", f"--workdir={workdir}", "--data=digits",
     f"--out={tmp_path / 'z.npy'}"],
    cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
  )  # fmt: skip
  assert used.returncode == 2, used.stderr[-2000:]
  assert "--trust_model_code" in used.stderr and "Traceback" not in used.stderr
  assert not mark.exists()

  # Asked to, aejax imports it (and the module's builder runs).
  trusted = subprocess.run(
    [sys.executable, "-m", "aejax.use", "encode", f"--workdir={workdir}", "--data=digits",
     f"--out={tmp_path / 'z.npy'}", "--trust_model_code"],
    cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
  )  # fmt: skip
  assert trusted.returncode != 0 and mark.read_text() == "imported\n"


def test_a_config_naming_a_missing_builder_fails_in_one_line():
  c = tiny_digits_config()
  for name, match in (
    ("no_such_module_anywhere:build", "cannot import 'no_such_module_anywhere'"),
    ("json:no_such_function", "'json' has no function 'no_such_function'"),
    ("builtins:slice", "built slice, not a Flax module"),
  ):
    c.model.name = name
    with pytest.raises(errors.ConfigError, match=match):
      models.build_model(c.model, (8, 8, 1), trust_model_code=True)
  # Without ':' it is an unknown built-in name; validation lists the valid ones.
  c.model.name = "resnet"
  with pytest.raises(errors.ConfigError, match="'module.path:function'"):
    configs.validate(c, num_devices=8)
