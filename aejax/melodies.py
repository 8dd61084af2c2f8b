"""What a trained sequence model offers a listener: its melodies as MIDI, WAV and piano rolls.

For a run on token sequences (data.SequenceSet: the Bach chorale melodies)
`visualize.finalize` calls `write_final_outputs` instead of drawing image
figures. It writes, from the test split and the model's prior:
- reconstructions.{png,mid,wav}: test phrases and their reconstructions
  (each phrase, then its reconstruction, in the MIDI file and the audio);
- samples.{png,mid,wav}: melodies from the prior;
- interpolation.{png,mid,wav}: MusicVAE's comparison (Roberts et al. 2018,
  Fig. 5): two test phrases joined in latent space (the decodings of
  (1 - a) z_A + a z_B) against in token space (each step's token taken from
  B where a fixed random draw falls below a, else from A).
Audio needs the FluidSynth program and a General MIDI SoundFont
(aejax/music.py); without them the WAVs are left out with a warning that
says how to install them, and everything else is written.
"""

import logging

import numpy as np
from etils import epath

from aejax import chorales, errors, music
from aejax.api import TrainedModel

# Phrases in the reconstruction and sample sheets, and steps of the interpolation: a 2-bar
# phrase lasts 4 s at 120 bpm, so the reconstructions' audio is about 40 s.
NUM_PHRASES = 4
INTERPOLATION_STEPS = 7
GAP_STEPS = 8  # Half a bar of silence between melodies in the MIDI files and audio.
# Audio sample rate: 22.05 kHz keeps a run's three WAVs near 10 MB (stereo, 16 bit).
SAMPLE_RATE = 22050


def token_space_interpolation(tokens_a, tokens_b, steps: int, seed: int = 0) -> np.ndarray:
  """(steps, T) token sequences from A (first) to B (last): at weight a, step t takes B's token
  where a fixed uniform draw u_t < a (one draw for every weight, so B's tokens only spread)."""
  u_T = np.random.default_rng(seed).uniform(size=len(tokens_a))
  weights = np.linspace(0.0, 1.0, steps)
  return np.where(u_T[None, :] < weights[:, None], tokens_b[None, :], tokens_a[None, :])


def _audio(midi_path: epath.Path, written: list[str]) -> None:
  """The WAV of a MIDI file next to it, or a warning when FluidSynth cannot render here."""
  wav = midi_path.with_suffix(".wav")
  try:
    music.render_wav(midi_path, wav, sample_rate=SAMPLE_RATE)
  except errors.ConfigError as error:
    logging.warning("No audio for %s: %s", midi_path.name, error)
    return
  written.append(wav.name)


def _save(workdir, stem: str, rows: dict, title: str, melodies: list, written: list) -> None:
  png = music.piano_roll(workdir / f"{stem}.png", rows, title=title)
  midi = music.write_midi(workdir / f"{stem}.mid", melodies, gap_steps=GAP_STEPS)
  written += [png.name, midi.name]
  _audio(epath.Path(midi), written)


def write_final_outputs(handle: TrainedModel, eval_set, workdir) -> list[str]:
  """The piano rolls, MIDI files and audio of a sequence run; returns the names written."""
  workdir = epath.Path(workdir)
  title = f"{handle.config.model.name} on {handle.config.data.name}, step {handle.step}"
  written: list[str] = []
  x = eval_set.images[:NUM_PHRASES]
  inputs, outputs = chorales.melodies_of(x), chorales.melodies_of(handle.reconstruct(x))
  interleaved = [melody for pair in zip(inputs, outputs, strict=True) for melody in pair]
  rows = {"input": inputs, "reconstruction": outputs}
  _save(workdir, "reconstructions", rows, f"Reconstructions: {title}", interleaved, written)
  if handle.can_generate:
    samples = chorales.melodies_of(handle.generate(NUM_PHRASES, seed=0))
    rows = {"samples": samples}
    _save(workdir, "samples", rows, f"Samples from the prior: {title}", samples, written)
  if len(eval_set.images) >= 2:
    # Two phrases from apart in the test split (neighbouring windows overlap by a bar).
    ends = eval_set.images[[0, len(eval_set.images) // 2]]
    z_2xD = handle.encode(ends)
    weights = np.linspace(0.0, 1.0, INTERPOLATION_STEPS)[:, None]
    latent = chorales.melodies_of(handle.decode((1.0 - weights) * z_2xD[0] + weights * z_2xD[1]))
    tokens_2xT = ends[:, :, 0, :].argmax(axis=-1)
    mixed = token_space_interpolation(tokens_2xT[0], tokens_2xT[1], INTERPOLATION_STEPS)
    token_space = [chorales.decode_melody(tokens.astype(np.int32)) for tokens in mixed]
    rows = {"latent space": latent, "token space": token_space}
    title = f"Interpolation between two test phrases: {title}"
    _save(workdir, "interpolation", rows, title, latent, written)
  return written


# ---------------------------------------------------------------------------
# Metrics of melodies (aejax.evaluate on a melody run).


def pitch_class_histogram(melodies) -> np.ndarray:
  """The share of notes (by onset) on each of the 12 pitch classes, C first; zeros if none."""
  counts = np.zeros(12)
  for melody in melodies:
    for note in melody:
      counts[note[2] % 12] += 1
  return counts / max(counts.sum(), 1.0)


def note_length_histogram(melodies, max_steps: int) -> np.ndarray:
  """The share of notes of each length 1..max_steps steps (longer ones in the last bin)."""
  counts = np.zeros(max_steps)
  for melody in melodies:
    for start, end, _ in melody:
      counts[min(end - start, max_steps) - 1] += 1
  return counts / max(counts.sum(), 1.0)


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
  """Half the L1 distance of two distributions: 0 for equal ones, 1 for disjoint ones."""
  return float(0.5 * np.abs(p - q).sum())


def sample_statistics(samples, reference, max_steps: int) -> dict:
  """How far sampled melodies are from held-out ones in their pitch-class and note-length
  distributions (total variation, [0, 1]), and the mean notes per phrase of each."""
  return {
    "pitch_class_tv": total_variation(
      pitch_class_histogram(samples), pitch_class_histogram(reference)
    ),
    "note_length_tv": total_variation(
      note_length_histogram(samples, max_steps), note_length_histogram(reference, max_steps)
    ),
    "notes_per_phrase_samples": float(np.mean([len(m) for m in samples])),
    "notes_per_phrase_reference": float(np.mean([len(m) for m in reference])),
  }


def token_accuracy(outputs_NxTx1xV, targets_NxTx1xV) -> float:
  """The share of steps whose most likely output token is the target's."""
  outputs = np.asarray(outputs_NxTx1xV).argmax(axis=-1)
  return float(np.mean(outputs == np.asarray(targets_NxTx1xV).argmax(axis=-1)))
