"""Melodies of the Bach chorales as MusicVAE token sequences (Roberts et al. 2018).

Encoding. MusicVAE's monophonic melody encoding, one token per sixteenth-note step:
- NOTE_OFF (0): the sounding note stops at this step; silence follows.
- NO_EVENT (1): nothing changes; the sounding note holds, or the silence goes on.
- FIRST_PITCH_TOKEN + (pitch - MIN_PITCH): a note of MIDI pitch `pitch` starts at this step
  (ending whatever note sounded before it).
A sequence starts in silence, so a leading rest is a run of NO_EVENT and a note that sounds to
the end of the sequence needs no NOTE_OFF. NOTE_OFF is written only where silence follows a
note: a note that ends where the next one starts is ended by that note-on.

Parsing. `parse_chorale` reads one voice (soprano, alto, tenor or bass, picked by part name,
since some files put obbligato instruments first) of a 4/4 chorale, ties merged, chords reduced
to their highest pitch, quantised to sixteenths. Step 0 is a bar line: a piece with a pickup
starts with silence up to the pickup, so bar lines fall on every STEPS_PER_BAR-th step. Split
measures (the 3 + 1 beats at repeat signs and phrase ends in many chorales) keep that grid; a
piece whose full measures leave the grid, or that is not in 4/4 throughout, is skipped.

Windows. `windows` cuts the sequence into windows of whole bars, each starting on a bar line.
A window that starts while a note sounds begins with that note as a fresh note-on, so every
window decodes on its own; windows silent for more than half their steps are dropped.

Data set. `build_dataset` splits the chorales (not the windows) into train and test, then
cuts train windows in every requested transposition that stays in range and test windows
untransposed. `load_dataset` caches the result as one npz per voice and window length. The
split is by file: the corpus holds several harmonisations of the same hymn tune, and those
can land on both sides, so the test melodies are new settings, not always new tunes.

Measured on music21 10.5.1's corpus (408 Bach .mxl files), soprano (voice 0), transpositions
-5..+6 semitones, test fraction 0.1, seed 0:
- 352 chorales parsed, 56 skipped: 49 not in 4/4 throughout (42 in 3/4, 4 switching between
  3/4 and 4/4, one in 3/2, one switching between 3/2 and 4/4, one in 12/8), 6 whose measures
  leave the bar grid (a 3-beat measure not completed by a 1-beat one, a 2- or 10-beat measure),
  and bwv846, a keyboard prelude with no soprano part. Every voice gives the same 352.
- 317 train and 35 test chorales; at 2 bars 4,105 train windows per transposition (49,260 in
  the 12 transpositions, all in range) and 488 test windows; at 4 bars 3,478 (41,736) and 418.
- the soprano spans MIDI 57..81 (A3..A5); alto 53..74, tenor 48..69, bass 36..64.
- a full build takes about 30-35 s in one process (parsing dominates, ~0.08 s per file); the
  npz is 0.30 MB at 2 bars and 0.33 MB at 4 bars and loads in about 10 ms.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
import os
import pathlib
import tempfile
import time
import zipfile
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np

from aejax import errors

NOTE_OFF = 0
NO_EVENT = 1
FIRST_PITCH_TOKEN = 2
# The parsed chorales span MIDI 57..81 in the soprano and 36..81 over all four voices. The range
# covers every voice transposed by -5..+6 semitones, so the default transpositions lose no
# window of any voice to the range.
MIN_PITCH = 31
MAX_PITCH = 87
VOCAB_SIZE = FIRST_PITCH_TOKEN + MAX_PITCH - MIN_PITCH + 1

STEPS_PER_QUARTER = 4
STEPS_PER_BAR = 16  # 4/4 only.
_QUARTERS_PER_BAR = STEPS_PER_BAR // STEPS_PER_QUARTER

# Voice index -> the start of its part's name in the corpus files ("Soprano", "Soprano 1", ...).
VOICE_NAMES = ("Soprano", "Alto", "Tenor", "Bass")

DEFAULT_TRANSPOSITIONS = tuple(range(-5, 7))

# Bump when the content of the cached arrays changes for the same settings.
_CACHE_FORMAT = 1


class Note(NamedTuple):
  """One note: sounds from step `start` up to, not including, step `end` (sixteenths)."""

  start: int
  end: int
  pitch: int  # MIDI pitch.


def _check_steps(num_steps) -> int:
  if isinstance(num_steps, bool) or not isinstance(num_steps, int | np.integer) or num_steps < 0:
    raise errors.ConfigError(f"num_steps must be an int >= 0, got {num_steps!r}.")
  return int(num_steps)


def _check_tokens(tokens) -> np.ndarray:
  """tokens as an int array, checked to hold only tokens of the vocabulary."""
  array = np.asarray(tokens)
  if array.size and not np.issubdtype(array.dtype, np.integer):
    raise errors.DataError(f"melody tokens must be integers, got dtype {array.dtype}.")
  if array.size and (array.min() < 0 or array.max() >= VOCAB_SIZE):
    bad = array[(array < 0) | (array >= VOCAB_SIZE)]
    raise errors.DataError(
      f"melody tokens must lie in 0..{VOCAB_SIZE - 1} (NOTE_OFF, NO_EVENT, then MIDI pitches "
      f"{MIN_PITCH}..{MAX_PITCH}); found {bad[:5].tolist()}."
    )
  return array.astype(np.int32, copy=False)


def encode_melody(notes: Iterable[Note], num_steps: int) -> np.ndarray:
  """The int32 (num_steps,) tokens of a monophonic melody (see the module docstring).

  Notes may come in any order; they must not overlap, must lie within 0..num_steps and have
  pitches in MIN_PITCH..MAX_PITCH. Steps before the first note are NO_EVENT (the sequence
  starts silent).
  """
  num_steps = _check_steps(num_steps)
  ordered = sorted(Note(*map(int, note)) for note in notes)
  tokens = np.full(num_steps, NO_EVENT, np.int32)
  previous_end = 0
  for index, note in enumerate(ordered):
    start, end, pitch = note
    if start < 0 or end <= start:
      raise errors.DataError(
        f"note {note} is empty or starts before step 0 (needs 0 <= start < end)."
      )
    if end > num_steps:
      raise errors.DataError(f"note {note} ends past the melody's {num_steps} steps.")
    if not MIN_PITCH <= pitch <= MAX_PITCH:
      raise errors.DataError(
        f"note {note} has pitch {pitch} out of range: the encoding covers MIDI pitches "
        f"{MIN_PITCH}..{MAX_PITCH}."
      )
    if index and start < previous_end:
      raise errors.DataError(
        f"notes overlap: {ordered[index - 1]} still sounds when {note} starts; a melody is "
        "monophonic."
      )
    tokens[start] = FIRST_PITCH_TOKEN + pitch - MIN_PITCH
    if end < num_steps:
      tokens[end] = NOTE_OFF  # A note that starts at `end` overwrites it next iteration.
    previous_end = end
  return tokens


def decode_melody(tokens) -> list[Note]:
  """The notes of a (T,) token sequence, in order; the inverse of encode_melody.

  A note still sounding at the end ends at len(tokens). NOTE_OFF during silence (which
  encode_melody never writes, but a model may) changes nothing.
  """
  tokens = _check_tokens(tokens)
  if tokens.ndim != 1:
    raise errors.DataError(f"decode_melody takes one (T,) sequence, got shape {tokens.shape}.")
  notes = []
  start = pitch = None
  for step in np.flatnonzero(tokens != NO_EVENT).tolist():
    if start is not None:
      notes.append(Note(start, step, pitch))
      start = None
    token = int(tokens[step])
    if token >= FIRST_PITCH_TOKEN:
      start, pitch = step, token - FIRST_PITCH_TOKEN + MIN_PITCH
  if start is not None:
    notes.append(Note(start, len(tokens), pitch))
  return notes


def melodies_of(one_hot_NxTx1xV) -> list[list[Note]]:
  """The melodies of one-hot token sequences, (N, T, 1, V) as the trainer sees them, or of a
  model's outputs for them (logits or probabilities): each step's most likely token, decoded."""
  tokens_NxT = np.asarray(one_hot_NxTx1xV)[:, :, 0, :].argmax(axis=-1).astype(np.int32)
  return [decode_melody(tokens) for tokens in tokens_NxT]


def transpose(tokens, semitones: int) -> np.ndarray | None:
  """tokens (any shape) with every note-on moved by `semitones`; None if one leaves the range."""
  tokens = _check_tokens(tokens)
  is_note_on = tokens >= FIRST_PITCH_TOKEN
  shifted = np.where(is_note_on, tokens + int(semitones), tokens).astype(np.int32)
  if np.any(is_note_on & ((shifted < FIRST_PITCH_TOKEN) | (shifted >= VOCAB_SIZE))):
    return None
  return shifted


def melody_tokens(notes: Sequence[Note]) -> np.ndarray:
  """encode_melody over whole bars: the length is the last note's end rounded up to a bar."""
  end = max((note.end for note in notes), default=0)
  return encode_melody(notes, math.ceil(end / STEPS_PER_BAR) * STEPS_PER_BAR)


def windows(tokens, bars: int, hop_bars: int = 1) -> np.ndarray:
  """int32 (N, bars * STEPS_PER_BAR) windows of a melody's tokens, starting on bar lines.

  The candidate windows cover steps [s, s + T) for s = 0, hop_bars * STEPS_PER_BAR, ... while
  they fit in the sequence (step 0 of tokens must be a bar line, as parse_chorale makes it).
  A window that starts while a note sounds begins with that note's note-on instead of
  NO_EVENT, and one that starts on a NOTE_OFF begins with NO_EVENT (it starts silent anyway),
  so each window is the exact encoding of the notes clipped to it. Windows in which no note
  sounds on more than half of the steps are dropped: they are mostly rest, pickup silence or
  the padding after the final chord.
  """
  for name, value in (("bars", bars), ("hop_bars", hop_bars)):
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
      raise errors.ConfigError(f"windows: {name} must be an int >= 1, got {value!r}.")
  tokens = _check_tokens(tokens)
  if tokens.ndim != 1:
    raise errors.DataError(f"windows takes one (T,) sequence, got shape {tokens.shape}.")
  length = bars * STEPS_PER_BAR
  steps = np.arange(len(tokens))
  # The last step at or before each step that changed the state (a note-on or NOTE_OFF).
  last_event = np.maximum.accumulate(np.where(tokens != NO_EVENT, steps, -1))
  state = np.where(last_event >= 0, tokens[np.maximum(last_event, 0)], NOTE_OFF)
  sounding = state >= FIRST_PITCH_TOKEN
  starts = np.arange(0, len(tokens) - length + 1, hop_bars * STEPS_PER_BAR)
  kept = [s for s in starts.tolist() if np.count_nonzero(~sounding[s : s + length]) * 2 <= length]
  windows_NxT = np.empty((len(kept), length), np.int32)
  for row, start in enumerate(kept):
    windows_NxT[row] = tokens[start : start + length]
    windows_NxT[row, 0] = state[start] if sounding[start] else NO_EVENT
  return windows_NxT


def corpus_paths() -> list[pathlib.Path]:
  """The Bach files of music21's corpus in MusicXML (.mxl), sorted by file name."""
  from music21 import corpus

  return sorted(
    (pathlib.Path(path) for path in corpus.getComposer("bach") if str(path).endswith(".mxl")),
    key=lambda path: path.name,
  )


def chorale_name(path: str | os.PathLike[str]) -> str:
  """A chorale's name: its file name without the extension, e.g. "bwv66.6"."""
  name = pathlib.Path(path).name
  return name[: -len(".mxl")] if name.endswith(".mxl") else pathlib.Path(name).stem


def _parse(path: str | os.PathLike[str], voice: int) -> tuple[list[Note] | None, str | None]:
  """(notes, None) for a usable chorale, (None, why it was skipped) otherwise."""
  if isinstance(voice, bool) or voice not in range(len(VOICE_NAMES)):
    raise errors.ConfigError(
      f"voice must be 0..{len(VOICE_NAMES) - 1} ({', '.join(VOICE_NAMES)}), got {voice!r}."
    )
  path = pathlib.Path(path)
  if not path.is_file():
    raise errors.DataError(f"chorale file {path} does not exist or is not a file.")
  from music21 import converter

  try:
    # forceSource: parse the file itself rather than write and read music21's pickle cache;
    # load_dataset's npz is the cache.
    score = converter.parse(path, forceSource=True)
  except Exception as err:  # music21 raises many unrelated types for unreadable files.
    raise errors.DataError(
      f"music21 cannot parse {path} ({type(err).__name__}: {err}); the file is damaged or "
      "not MusicXML."
    ) from err
  wanted = VOICE_NAMES[voice].lower()
  parts = [part for part in score.parts if (part.partName or "").strip().lower().startswith(wanted)]
  if not parts:
    names = [part.partName for part in score.parts]
    return None, f"no {VOICE_NAMES[voice]} part (parts {names})"
  part = parts[0]

  metres = {sig.ratioString for sig in part.recurse().getElementsByClass("TimeSignature")}
  if metres != {"4/4"}:
    return None, f"metre {', '.join(sorted(metres)) or 'missing'}, not 4/4 throughout"
  measures = list(part.getElementsByClass("Measure"))
  full = [m for m in measures if m.duration.quarterLength >= _QUARTERS_PER_BAR]
  if not full:
    return None, "no complete measure"
  # Shift the piece so the first complete measure starts on a bar line of the step grid; a
  # pickup then ends where that bar starts.
  shift = -full[0].offset % _QUARTERS_PER_BAR
  off_grid = [m.number for m in full if (m.offset + shift) % _QUARTERS_PER_BAR]
  if off_grid:
    return None, f"measures {off_grid[:3]} start off the bar grid (irregular metre)"

  notes = []
  for element in part.stripTies().flatten().notes:
    start = round((element.offset + shift) * STEPS_PER_QUARTER)
    end = round((element.offset + element.quarterLength + shift) * STEPS_PER_QUARTER)
    if end <= start:  # Grace notes and notes shorter than half a sixteenth.
      continue
    notes.append(Note(start, end, max(pitch.midi for pitch in element.pitches)))
  if not notes:
    return None, f"no notes in the {VOICE_NAMES[voice]} part"
  notes.sort()
  for before, after in zip(notes, notes[1:], strict=False):
    if after.start < before.end:
      return None, f"overlapping notes in the {VOICE_NAMES[voice]} part: {before}, {after}"
  outside = [note.pitch for note in notes if not MIN_PITCH <= note.pitch <= MAX_PITCH]
  if outside:
    return None, f"pitches {sorted(set(outside))} outside {MIN_PITCH}..{MAX_PITCH}"
  return notes, None


def parse_chorale(path: str | os.PathLike[str], voice: int = 0) -> list[Note] | None:
  """The notes of one voice of a MusicXML chorale, in sixteenth steps; None if skipped.

  voice: 0 soprano, 1 alto, 2 tenor, 3 bass; the first part whose name starts with that word.
  Ties are merged, a chord gives its highest pitch, rests give silence. Offsets (in quarter
  lengths) are multiplied by STEPS_PER_QUARTER and rounded; a note that rounds to no steps is
  dropped. Step 0 is the bar line before the first note (a pickup starts late in bar 0).

  Returns None, logging why, for a piece that is not in 4/4 throughout, whose measures leave
  the bar grid, lacks the voice, has overlapping notes in it, or pitches outside
  MIN_PITCH..MAX_PITCH. Raises DataError for a missing or unreadable file.
  """
  notes, reason = _parse(path, voice)
  if notes is None:
    logging.info("skipping chorale %s: %s", path, reason)
  return notes


def split_chorales(
  names: Iterable[str], test_fraction: float = 0.1, seed: int = 0
) -> tuple[list[str], list[str]]:
  """(train_names, test_names), each sorted: round(test_fraction * n) chorales drawn for test.

  The draw depends only on the set of names and the seed.
  """
  unique = sorted(set(names))
  if not 0 <= test_fraction < 1:
    raise errors.ConfigError(f"test_fraction must be in [0, 1), got {test_fraction!r}.")
  order = np.random.default_rng(seed).permutation(len(unique))
  num_test = round(test_fraction * len(unique))
  test = sorted(unique[i] for i in order[:num_test])
  train = sorted(unique[i] for i in order[num_test:])
  return train, test


def _settings(bars, voice, transpositions, test_fraction, seed, names) -> dict:
  """What a data set was built from; a cache is valid only for the same settings."""
  try:
    music21_version = importlib.metadata.version("music21")
  except importlib.metadata.PackageNotFoundError:
    music21_version = None
  return {
    "format": _CACHE_FORMAT,
    "bars": int(bars),
    "voice": int(voice),
    "transpositions": [int(t) for t in transpositions],
    "test_fraction": float(test_fraction),
    "seed": int(seed),
    "names": None if names is None else sorted(names),
    "music21": music21_version,
  }


def build_dataset(
  bars: int = 2,
  voice: int = 0,
  transpositions: Iterable[int] = DEFAULT_TRANSPOSITIONS,
  test_fraction: float = 0.1,
  seed: int = 0,
  names: Iterable[str] | None = None,
) -> dict[str, np.ndarray]:
  """Windows of `bars` bars of one voice of the Bach chorales, split by chorale.

  names: chorale names ("bwv66.6") to use instead of the whole corpus.

  Returns numpy arrays:
    train, test: int32 (N, bars * STEPS_PER_BAR) and (M, ...) token windows; train holds every
      window of the train chorales in every transposition that keeps its notes in range,
      test the test chorales' windows untransposed.
    train_chorale, test_chorale: int32 (N,), (M,) index into `names` of each window's chorale.
    train_transposition: int32 (N,) semitones of each train window.
    names: the parsed chorales' names, sorted; train_names, test_names: the split.
    skipped_names, skipped_reasons: the chorales left out and why.
    settings: a JSON string of the arguments and the music21 version.
  """
  transpositions = [int(t) for t in transpositions]
  if not transpositions:
    raise errors.ConfigError("transpositions is empty; use [0] for no transposition.")
  paths = corpus_paths()
  requested = None if names is None else sorted(set(names))
  if requested is not None:
    by_name = {chorale_name(path): path for path in paths}
    unknown = [name for name in requested if name not in by_name]
    if unknown:
      raise errors.ConfigError(
        f"unknown chorales {unknown[:5]}; names are file names without .mxl, e.g. "
        f"{sorted(by_name)[:3]}."
      )
    paths = [by_name[name] for name in requested]

  began = time.perf_counter()
  tokens_by_name, skipped = {}, {}
  for path in paths:
    notes, reason = _parse(path, voice)
    if notes is None:
      skipped[chorale_name(path)] = reason
    else:
      tokens_by_name[chorale_name(path)] = melody_tokens(notes)
  parsed = sorted(tokens_by_name)
  train_names, test_names = split_chorales(parsed, test_fraction, seed)
  index = {name: i for i, name in enumerate(parsed)}

  length = bars * STEPS_PER_BAR
  train, train_chorale, train_transposition = [], [], []
  for name in train_names:
    windows_NxT = windows(tokens_by_name[name], bars)
    for semitones in transpositions:
      shifted = [transpose(window, semitones) for window in windows_NxT]
      kept = [window for window in shifted if window is not None]
      train.extend(kept)
      train_chorale.extend([index[name]] * len(kept))
      train_transposition.extend([semitones] * len(kept))
  test, test_chorale = [], []
  for name in test_names:
    windows_NxT = windows(tokens_by_name[name], bars)
    test.extend(windows_NxT)
    test_chorale.extend([index[name]] * len(windows_NxT))
  logging.info(
    "chorales: %d parsed, %d skipped, %d train and %d test windows of %d bars in %.1f s",
    len(parsed),
    len(skipped),
    len(train),
    len(test),
    bars,
    time.perf_counter() - began,
  )

  def stack(rows) -> np.ndarray:
    return np.asarray(rows, np.int32).reshape(len(rows), length)

  settings = _settings(bars, voice, transpositions, test_fraction, seed, requested)
  return {
    "train": stack(train),
    "test": stack(test),
    "train_chorale": np.asarray(train_chorale, np.int32),
    "test_chorale": np.asarray(test_chorale, np.int32),
    "train_transposition": np.asarray(train_transposition, np.int32),
    "names": np.asarray(parsed, np.str_),
    "train_names": np.asarray(train_names, np.str_),
    "test_names": np.asarray(test_names, np.str_),
    "skipped_names": np.asarray(sorted(skipped), np.str_),
    "skipped_reasons": np.asarray([skipped[name] for name in sorted(skipped)], np.str_),
    "settings": np.asarray(json.dumps(settings, sort_keys=True)),
  }


_DATASET_KEYS = (
  "train",
  "test",
  "train_chorale",
  "test_chorale",
  "train_transposition",
  "names",
  "train_names",
  "test_names",
  "skipped_names",
  "skipped_reasons",
  "settings",
)


def cache_path(cache_dir: str | os.PathLike[str], bars: int = 2, voice: int = 0) -> pathlib.Path:
  """The npz that load_dataset reads and writes."""
  return pathlib.Path(cache_dir) / f"chorales_{voice}_{bars}bar.npz"


def _read_cache(path: pathlib.Path, settings: dict) -> dict[str, np.ndarray] | None:
  """The data set in path, or None if it is missing, unreadable or built with other settings."""
  if not path.is_file():
    return None
  try:
    with np.load(path, allow_pickle=False) as archive:
      dataset = {key: archive[key] for key in _DATASET_KEYS}
  except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError) as err:
    logging.warning("chorales: rebuilding the unreadable cache %s (%s)", path, err)
    return None
  if json.loads(str(dataset["settings"])) != settings:
    logging.warning("chorales: rebuilding the cache %s, built with other settings", path)
    return None
  return dataset


def load_dataset(
  cache_dir: str | os.PathLike[str],
  bars: int = 2,
  voice: int = 0,
  *,
  transpositions: Iterable[int] = DEFAULT_TRANSPOSITIONS,
  test_fraction: float = 0.1,
  seed: int = 0,
  names: Iterable[str] | None = None,
) -> dict[str, np.ndarray]:
  """build_dataset's arrays, read from cache_path(cache_dir, bars, voice) when that holds them.

  Otherwise (no file, an unreadable one, or one built with other arguments or another music21
  version) builds them from the corpus and writes the file atomically (a temporary file in the
  same folder, then os.replace), so a run that stops midway leaves no half-written cache and
  concurrent runs each see a whole file.
  """
  transpositions = [int(t) for t in transpositions]
  requested = None if names is None else sorted(set(names))
  settings = _settings(bars, voice, transpositions, test_fraction, seed, requested)
  path = cache_path(cache_dir, bars, voice)
  cached = _read_cache(path, settings)
  if cached is not None:
    return cached
  dataset = build_dataset(bars, voice, transpositions, test_fraction, seed, requested)
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
  except OSError as err:
    raise errors.DataError(f"cannot write the chorale cache in {path.parent}: {err}.") from err
  try:
    with os.fdopen(handle, "wb") as file:
      np.savez_compressed(file, **dataset)
    os.chmod(temporary, 0o644)  # mkstemp's file is the owner's alone; the cache is shared.
    os.replace(temporary, path)
  except BaseException:
    pathlib.Path(temporary).unlink(missing_ok=True)
    raise
  return dataset
