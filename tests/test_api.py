"""Tests for aejax/api.py and the aejax.use CLI: load, encode, decode, generate, reconstruct,
their errors, and the conditional VAE's label conditioning."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest
from helpers import tiny_digits_config

import aejax
from aejax import data, errors, samplers, train
from aejax.zoo import two_stage_vae

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def vae_workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("vae")
  train.train_and_evaluate(tiny_digits_config(), str(workdir))
  return workdir


@pytest.fixture(scope="module")
def digits():
  return data.load("digits", "test")


def test_load_and_round_trip(vae_workdir, digits):
  model = aejax.load(vae_workdir)
  assert model.step == 16 and model.image_shape == (8, 8, 1) and model.is_variational
  z = model.encode(digits.images[:5])
  assert z.shape == (5, 2) and z.dtype == np.float32
  mean, logvar = model.posterior(digits.images[:5])
  np.testing.assert_allclose(z, mean)
  assert logvar.shape == (5, 2)
  x = model.decode(z)
  assert x.shape == (5, 8, 8, 1) and 0.0 <= x.min() and x.max() <= 1.0
  np.testing.assert_allclose(model.reconstruct(digits.images[:5]), x, rtol=1e-5, atol=1e-6)
  # (N, H, W) grey images are accepted too.
  np.testing.assert_allclose(model.encode(digits.images[:5, :, :, 0]), z, rtol=1e-6)
  samples = model.generate(7, seed=1)
  assert samples.shape == (7, 8, 8, 1)
  np.testing.assert_array_equal(samples, model.generate(7, seed=1))
  assert not np.array_equal(samples, model.generate(7, seed=2))
  ll = model.log_likelihood(digits.images[:5], z)
  assert ll.shape == (5,) and np.all(ll < 0)
  # An earlier checkpoint is a different model.
  early = aejax.load(vae_workdir, step=8)
  assert early.step == 8 and not np.allclose(early.encode(digits.images[:5]), z)


def test_more_images_than_one_chunk(vae_workdir, digits):
  model = aejax.load(vae_workdir)
  many = np.concatenate([digits.images] * 4)  # 1,440 images: two chunks of the jitted call.
  z = model.encode(many)
  np.testing.assert_allclose(z[:360], z[360:720], rtol=1e-6)


@pytest.mark.parametrize(
  "call,match",
  [
    (lambda m, x: m.encode(x * 16), r"values must lie in \[0, 1\]"),
    (lambda m, x: m.encode((x * 255).astype(np.uint8)), "divide uint8 images by 255"),
    (lambda m, x: m.encode(np.zeros((2, 28, 28, 1), np.float32)), r"expected shape \(N, 8, 8, 1\)"),
    (lambda m, x: m.encode(np.full((2, 8, 8, 1), np.nan, np.float32)), "NaN"),
    (lambda m, x: m.decode(np.zeros((2, 5), np.float32)), r"latents: expected shape \(N, 2\)"),
    (lambda m, x: m.generate(0), "positive integer"),
    (lambda m, x: m.generate(2, temperature=0.5), "samples with no temperature"),
    (lambda m, x: m.tokens(x), "not a sequence data set"),
    (lambda m, x: m.encode(x, labels=np.zeros(len(x), np.int32)), "not conditional"),
    (lambda m, x: m.log_likelihood(x[:3], np.zeros((2, 2), np.float32)), "2 latents for 3"),
  ],
)
def test_bad_input_gets_a_clear_error(vae_workdir, digits, call, match):
  with pytest.raises(errors.InputError, match=match):
    call(aejax.load(vae_workdir), digits.images[:4])


def test_checkpoint_errors(vae_workdir, tmp_path):
  with pytest.raises(errors.CheckpointError, match="does not exist"):
    aejax.load(tmp_path / "nope")
  with pytest.raises(errors.CheckpointError, match="config.json is missing"):
    aejax.load(tmp_path)
  with pytest.raises(errors.CheckpointError, match="available: 8, 16"):
    aejax.load(vae_workdir, step=3)
  # A config that does not match the checkpoint (other widths) is refused with a clear error.
  mismatched = tmp_path / "mismatched"
  mismatched.mkdir()
  for name in ("run_info.json", "checkpoints"):
    (mismatched / name).symlink_to(vae_workdir / name)
  config = (
    (vae_workdir / "config.json")
    .read_text()
    .replace('"hidden_widths": [\n      64\n', '"hidden_widths": [\n      32\n')
  )
  assert '"hidden_widths": [\n      32' in config
  (mismatched / "config.json").write_text(config)
  with pytest.raises(errors.CheckpointError, match="does not match"):
    aejax.load(mismatched)


def test_plain_autoencoder_has_no_prior(tmp_path, digits):
  train.train_and_evaluate(tiny_digits_config(name="dense_ae", latent_dim=4), str(tmp_path))
  model = aejax.load(tmp_path)
  assert model.encode(digits.images[:3]).shape == (3, 4)
  with pytest.raises(errors.InputError, match="no prior"):
    model.generate(4)
  with pytest.raises(errors.InputError, match="not a VAE"):
    model.posterior(digits.images[:3])


def test_conditional_vae_generates_the_requested_digit(tmp_path, digits):
  c = tiny_digits_config(num_classes=10, hidden_widths=(128,))
  c.total_steps = 600
  c.data.train_limit = 0  # All 1,437 training digits.
  c.eval_every_steps = c.checkpoint_every_steps = 600
  train.train_and_evaluate(c, str(tmp_path))
  model = aejax.load(tmp_path)
  with pytest.raises(errors.InputError, match="needs one class label"):
    model.generate(4)
  with pytest.raises(errors.InputError, match=r"values must lie in \[0, 10\)"):
    model.generate(2, labels=np.array([3, 12]))
  # Classify generated digits by the nearest class-mean test digit: the label must steer them.
  means = np.stack([digits.images[digits.labels == k].mean(0).ravel() for k in range(10)])
  hits = 0
  for k in range(10):
    samples = model.generate(20, seed=k, labels=np.full(20, k, np.int32)).reshape(20, -1)
    nearest = np.argmin(((samples[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    hits += int((nearest == k).sum())
  assert hits / 200 > 0.8, f"only {hits}/200 generated digits look like their label"
  # Same z, different label: different images.
  z = np.zeros((2, 2), np.float32)
  a, b = model.decode(z, np.array([1, 1])), model.decode(z, np.array([1, 7]))
  np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
  assert np.abs(a[1] - b[1]).mean() > 0.05


def _use(*args):
  return subprocess.run(
    [sys.executable, "-m", "aejax.use", *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_use_cli(vae_workdir, tmp_path, digits):
  np.save(tmp_path / "x.npy", digits.images[:10])
  result = _use(
    "encode",
    f"--workdir={vae_workdir}",
    f"--images={tmp_path / 'x.npy'}",
    f"--out={tmp_path / 'z.npy'}",
  )
  assert result.returncode == 0, result.stderr[-2000:]
  z = np.load(tmp_path / "z.npy")
  np.testing.assert_allclose(z, aejax.load(vae_workdir).encode(digits.images[:10]), rtol=1e-5)
  result = _use(
    "generate",
    f"--workdir={vae_workdir}",
    "--n=9",
    f"--out={tmp_path / 's.npy'}",
    f"--png={tmp_path / 's.png'}",
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert np.load(tmp_path / "s.npy").shape == (9, 8, 8, 1)
  assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
  bad = _use(
    "encode",
    f"--workdir={vae_workdir}",
    f"--images={tmp_path / 'missing.npy'}",
    f"--out={tmp_path / 'z2.npy'}",
  )
  assert bad.returncode == 2 and "missing.npy does not exist" in bad.stderr
  assert "Traceback" not in bad.stderr and not (tmp_path / "z2.npy").exists()


def test_a_plain_autoencoder_generates_through_a_second_stage_vae(tmp_path, digits, monkeypatch):
  train.train_and_evaluate(
    tiny_digits_config(total_steps=4, name="dense_ae", latent_dim=2), str(tmp_path)
  )
  # A small second stage: the defaults (2 x 512 units, 3,000 steps) take seconds more.
  small = two_stage_vae.Settings(widths=(16, 16), steps=300, batch_size=32, max_codes=128)
  monkeypatch.setattr(samplers, "two_stage_settings", lambda handle: small)
  model = aejax.load(tmp_path)
  samples = model.generate(200, seed=0, sampler="two_stage")
  assert samples.shape == (200, 8, 8, 1) and 0.0 <= samples.min() and samples.max() <= 1.0
  again = aejax.load(tmp_path).generate(5, seed=1, sampler="two_stage")
  np.testing.assert_array_equal(again, model.generate(5, seed=1, sampler="two_stage"))
  assert (tmp_path / "samplers" / f"two_stage_step4_{small.tag()}_seed0.msgpack").is_file()
  # The deterministic codes themselves were fitted: the drawn codes lie where they are.
  codes = samplers.two_stage_latents(model, 2000, seed=0)
  train_codes = model.encode(data.load("digits", "train", limit=128).images)
  assert np.all(np.abs(codes.mean(0) - train_codes.mean(0)) <= 0.5 * train_codes.std(0))
  assert np.all(np.abs(codes.std(0) / train_codes.std(0) - 1.0) <= 0.5)
  with pytest.raises(errors.InputError, match="unknown sampler 'flow'; valid: prior, gmm, two"):
    model.generate(4, sampler="flow")
