"""A MusicVAE run on the Bach chorale melodies end to end (experiments/zoo/music_vae.py:tiny):
training's piano rolls, then the final MIDI files, audio and interpolation sheet
(aejax/melodies.py), resumption, aejax.load and aejax.evaluate's melody metrics."""

import logging
import pathlib
import shutil

import numpy as np
import pytest
from matplotlib import image as mpimg
from test_experiments import load_experiment

import aejax
from aejax import (
  chorales,
  data,
  errors,
  evaluate,
  melodies,
  metrics,
  music,
  report,
  train,
  visualize,
)

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Ten chorales (one of them drawn for the test split): a tiny run's windows, parsed in a second.
SUBSET = (
  "bwv1.6", "bwv10.7", "bwv101.7", "bwv26.6", "bwv40.8", "bwv66.6", "bwv7.7", "bwv153.1",
  "bwv86.6", "bwv89.6",
)  # fmt: skip


@pytest.fixture
def few_chorales(monkeypatch):
  """data.load of a chorale set builds its cache from SUBSET only (a full build parses 408)."""
  real_build = chorales.build_dataset
  monkeypatch.setattr(chorales, "build_dataset", lambda *args: real_build(*args[:5], names=SUBSET))


def test_a_melody_run_writes_piano_rolls_midi_and_audio(tmp_path, few_chorales, caplog):
  c = load_experiment(ROOT / "experiments" / "zoo" / "music_vae.py").get_config("tiny")
  c.data.data_dir = str(tmp_path / "data")
  c.data.eval_limit = 16
  c.final_figures = True
  run_dir = tmp_path / "run"
  # Stopped at its first checkpoint, then resumed to the end (as a killed run restarts).
  first = c.copy_and_resolve_references()
  first.total_steps = c.checkpoint_every_steps
  train.train_and_evaluate(first, str(run_dir))
  with caplog.at_level(logging.INFO):
    train.train_and_evaluate(c, str(run_dir))
  assert f"Resumed from the checkpoint at step {c.checkpoint_every_steps}" in caplog.text
  model = aejax.load(run_dir)
  assert model.config.model.name == "music_vae" and model.step == c.total_steps
  # aejax.load takes and gives token sequences as well as their one-hot "images".
  test_set = data.load("bach_soprano_2bar", "test", data_dir=tmp_path / "data")
  tokens = test_set.tokens[:4]
  np.testing.assert_array_equal(model.encode(tokens), model.encode(test_set.images[:4]))
  decoded = model.tokens(model.reconstruct(tokens))
  assert decoded.shape == (4, 32) and decoded.dtype == np.int32
  assert 0 <= decoded.min() and decoded.max() < chorales.VOCAB_SIZE
  assert model.tokens(model.generate(3, seed=0)).shape == (3, 32)
  # The prior's temperature: near 0 each token is the most likely one (the same for any small
  # temperature, given the seed's z); at 5 the draws wander off it.
  cold = model.tokens(model.generate(2, seed=0, temperature=1e-6))
  np.testing.assert_array_equal(cold, model.tokens(model.generate(2, seed=0, temperature=2e-6)))
  assert np.any(cold != model.tokens(model.generate(2, seed=0, temperature=5.0)))
  with pytest.raises(errors.InputError, match="temperature: expected a number > 0"):
    model.generate(2, temperature=0.0)
  with pytest.raises(errors.InputError, match=r"tokens must lie in \[0, 59\)"):
    model.encode(tokens + 100)
  # At every evaluation: piano rolls, in the folder and in TensorBoard.
  for name in ("reconstructions.png", "samples.png"):
    picture = mpimg.imread(run_dir / name)
    assert picture.shape[0] > 200 and np.ptp(picture) > 0.5, name
  assert metrics.read_metrics(run_dir)[-1]["step"] == c.total_steps
  assert 0.0 <= metrics.read_metrics(run_dir)[-1]["eval/token_accuracy"] <= 1.0

  written = visualize.finalize(run_dir)
  for stem in ("reconstructions", "samples", "interpolation"):
    assert {f"{stem}.png", f"{stem}.mid", f"{stem}.wav"} <= set(written)
  # The reconstructions' MIDI holds each test phrase (then its reconstruction): the first one
  # is the test split's first window.
  first = chorales.melodies_of(test_set.images[:1])
  notes = music.read_midi_notes(run_dir / "reconstructions.mid")
  assert notes[: len(first[0])] == [tuple(n) for n in first[0]]
  # Real audio of the whole file: 8 melodies of 2 bars (4 s each at 120 bpm) with half-bar (1 s)
  # gaps, 39 s, and FluidSynth's release tail (2.0-3.3 s: tests/test_music.py).
  stats = music.wav_stats(run_dir / "reconstructions.wav")
  assert stats["rms"] > 0.01 and stats["sound_start_s"] < 4.0
  assert stats["sample_rate"] == melodies.SAMPLE_RATE
  assert 39.0 + 2.0 < stats["duration_s"] < 39.0 + 3.3

  # aejax.evaluate scores melodies, not pixels: token accuracy and sample statistics.
  results = evaluate.evaluate(run_dir, nll_samples=4, probe_train_size=0)
  assert 0.0 <= results["token_accuracy"] <= 1.0 and "psnr" not in results
  assert "nll_bits_per_dim" not in results and results["nll"] > 0
  stats = results["sample_statistics"]
  assert 0.0 <= stats["pitch_class_tv"] <= 1.0 and 0.0 <= stats["note_length_tv"] <= 1.0
  assert any("nats per sequence" in note for note in results["notes"])
  assert "token accuracy" in (run_dir / "eval_results.md").read_text()

  # A sweep's report over melody runs: the melody metrics as columns, piano rolls as sheets.
  sweep_dir = tmp_path / "sweep"
  shutil.copytree(run_dir, sweep_dir / "latent_dim=4")
  text = report.write_report(sweep_dir).read_text()
  assert "| reconstruction token accuracy |" in text and "psnr" not in text.lower()
  assert mpimg.imread(sweep_dir / "reconstructions.png").shape[0] > 200
  assert (sweep_dir / "samples.png").is_file()


def test_token_space_interpolation_moves_from_one_phrase_to_the_other():
  a, b = np.zeros(32, np.int32) + 1, np.arange(32, dtype=np.int32) % 5
  steps = melodies.token_space_interpolation(a, b, 7)
  assert np.array_equal(steps[0], a) and np.array_equal(steps[-1], b)
  # B's tokens only spread: a step taken from B stays B's at every later weight.
  from_b = steps == b[None, :]
  assert np.all(from_b[1:] >= from_b[:-1])


def test_melody_statistics_of_known_melodies():
  c_major = [[(0, 4, 60), (4, 8, 64), (8, 16, 67)]]
  a_minor = [[(0, 4, 69), (4, 6, 72), (6, 8, 76), (8, 16, 69)]]
  assert melodies.pitch_class_histogram(c_major)[[0, 4, 7]].tolist() == [1 / 3] * 3
  assert melodies.note_length_histogram(a_minor, 4).tolist() == [0.0, 0.5, 0.0, 0.5]
  stats = melodies.sample_statistics(c_major, a_minor, max_steps=16)
  # Pitch classes C, E shared (1/3 each against 1/4, 1/2 with A at 1/2): TV = 1/2.
  assert stats["pitch_class_tv"] == pytest.approx(0.5)
  assert stats["notes_per_phrase_samples"] == 3 and stats["notes_per_phrase_reference"] == 4
  assert melodies.sample_statistics(c_major, c_major, 16)["note_length_tv"] == 0.0
  one_hot = np.eye(3)[[[0, 1, 2], [2, 2, 2]]][:, :, None]
  assert melodies.token_accuracy(one_hot, np.eye(3)[[[0, 1, 1], [2, 2, 2]]][:, :, None]) == 5 / 6
