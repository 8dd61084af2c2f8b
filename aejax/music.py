"""Melodies as files a researcher can hear and look at: MIDI, piano-roll PNGs and rendered WAVs.

A melody is a list of notes (start, end, pitch): integer steps of a sixteenth note by default (4
steps per quarter note), `end` exclusive, MIDI pitch 0..127 (60 is middle C, C4). Notes may also
be any objects with `.start`, `.end` and `.pitch` attributes. Several melodies (an input and its
reconstruction, or the steps of an interpolation) are laid out one after another: each occupies a
slot of the same length, so they start on the same grid in the MIDI file and in the picture.

Audio is rendered by the FluidSynth program with a General MIDI SoundFont (`apt-get install
fluidsynth fluid-soundfont-gm` on Debian/Ubuntu); `render_wav` finds the SoundFont through its
argument, the AEJAX_SOUNDFONT environment variable or the usual install locations.
"""

from __future__ import annotations

import math
import numbers
import os
import pathlib
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Mapping, Sequence

import matplotlib.figure
import mido
import numpy as np

from aejax import errors

Note = tuple[int, int, int]

# Constant loudness: melodies from a model carry no dynamics, and equal velocities make renders of
# an input and its reconstruction comparable.
VELOCITY = 100
# MIDI ticks per step; 120 gives the common 480 ticks per quarter note at 4 steps per quarter.
_TICKS_PER_STEP = 120
# The MIDI header stores ticks per quarter in 15 bits.
_MAX_TICKS_PER_QUARTER = 0x7FFF
# Tempi write_midi accepts; slower ones do not fit MIDI's tempo field.
_MIN_BPM, _MAX_BPM = 4, 1e6
# The melody channel (0-based); channel 9 is General MIDI percussion and is avoided.
_CHANNEL = 0

# Environment variable naming the SoundFont that render_wav uses when none is passed.
SOUNDFONT_ENV = "AEJAX_SOUNDFONT"
# Where distributions install a General MIDI SoundFont, searched in order when neither the
# argument nor AEJAX_SOUNDFONT names one: Debian/Ubuntu (fluid-soundfont-gm), then Fedora and Arch.
DEFAULT_SOUNDFONTS = (
  "/usr/share/sounds/sf2/FluidR3_GM.sf2",
  "/usr/share/sounds/sf2/default-GM.sf2",
  "/usr/share/soundfonts/FluidR3_GM.sf2",
  "/usr/share/soundfonts/default.sf2",
)
_INSTALL_HINT = (
  "install FluidSynth and a General MIDI SoundFont, e.g. `apt-get install fluidsynth "
  "fluid-soundfont-gm` (Debian/Ubuntu) or `brew install fluid-synth` (macOS, then point "
  f"{SOUNDFONT_ENV} at an .sf2 file)"
)
# FluidSynth 2.x accepts synth.sample-rate in this range and exits with an error outside it.
_SAMPLE_RATES = (8000, 96000)
# Samples quieter than this (-60 dBFS) count as silence in wav_stats' sound_start_s/sound_end_s.
SILENCE = 1e-3

# Piano-roll geometry, in inches per step and per semitone, and the resolution of the PNG.
_STEP_INCHES = 0.08
_SEMITONE_INCHES = 0.1
_DPI = 100
_NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
_BLACK_KEYS = frozenset((1, 3, 6, 8, 10))


# ------------------------------------------------------------------------------------------------
# Checked inputs


def _int(value, name: str) -> int:
  """Returns value as int; integral floats (e.g. from a float array) are accepted."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise errors.ConfigError(f"{name}: expected an integer, got {value!r}")
  if isinstance(value, numbers.Integral):
    return int(value)
  if not math.isfinite(value) or value != int(value):
    raise errors.ConfigError(f"{name}: expected an integer, got {value!r}")
  return int(value)


def _checked_int(value, name: str, low: int | None = None, high: int | None = None) -> int:
  number = _int(value, name)
  if (low is not None and number < low) or (high is not None and number > high):
    if high is None:
      expected = f">= {low}"
    elif low is None:
      expected = f"<= {high}"
    else:
      expected = f"in {low}..{high}"
    raise errors.ConfigError(f"{name}: expected an integer {expected}, got {value!r}")
  return number


def _has_note_attributes(item) -> bool:
  return all(hasattr(item, key) for key in ("start", "end", "pitch"))


def _is_sequence(item) -> bool:
  return isinstance(item, Sequence | np.ndarray) and not isinstance(item, str | bytes)


def _is_melody(item) -> bool:
  """Whether item looks like a list of notes rather than one note: its elements are notes."""
  return (
    _is_sequence(item)
    and not _has_note_attributes(item)
    and all(_has_note_attributes(x) or _is_sequence(x) for x in item)
  )


def _note(item, name: str) -> Note:
  """Checks one note and returns it as (start, end, pitch) ints."""
  if _has_note_attributes(item):
    values = (item.start, item.end, item.pitch)
  elif _is_sequence(item) and len(item) == 3:
    values = tuple(item)
  else:
    raise errors.ConfigError(
      f"{name}: expected a note (start, end, pitch) or an object with .start, .end and .pitch, "
      f"got {item!r}"
    )
  keys = ("start", "end", "pitch")
  start, end, pitch = (_int(v, f"{name}.{key}") for v, key in zip(values, keys, strict=True))
  if start < 0:
    raise errors.ConfigError(f"{name}.start: expected a step >= 0, got {start}")
  if end <= start:
    raise errors.ConfigError(
      f"{name}.end: expected a step after start = {start} (end is exclusive, so a note lasts at "
      f"least one step), got {end}"
    )
  if not 0 <= pitch <= 127:
    raise errors.ConfigError(f"{name}.pitch: expected a MIDI pitch in 0..127, got {pitch}")
  return start, end, pitch


def _melody(items, name: str, no_overlaps: bool) -> list[Note]:
  if not _is_sequence(items):
    raise errors.ConfigError(f"{name}: expected a melody (a list of notes), got {items!r}")
  notes = [_note(item, f"{name}[{i}]") for i, item in enumerate(items)]
  if no_overlaps:
    # MIDI ends a note with a note-off of its pitch alone, so two sounding notes of one pitch
    # cannot be told apart: a reader would end the wrong one.
    order = sorted(range(len(notes)), key=lambda k: (notes[k][2], notes[k][0]))
    for before, after in zip(order[:-1], order[1:], strict=True):
      (start0, end0, pitch0), (start1, end1, pitch1) = notes[before], notes[after]
      if pitch0 == pitch1 and start1 < end0:
        raise errors.ConfigError(
          f"{name}[{after}]: overlaps {name}[{before}] at the same pitch {pitch1} (steps "
          f"{start0}..{end0} and {start1}..{end1}); MIDI cannot store two sounding notes of one "
          "pitch on one channel"
        )
  return notes


def _melodies(value, name: str, no_overlaps: bool = False) -> list[list[Note]]:
  """Checks one melody (a list of notes) or several (a list of those); returns a list of them."""
  if not _is_sequence(value):
    raise errors.ConfigError(
      f"{name}: expected a melody (a list of (start, end, pitch) notes) or a list of melodies, "
      f"got {value!r}"
    )
  items = list(value)
  # [] is one empty melody; [[], [...]] two melodies, since an empty list is no note.
  if items and _is_melody(items[0]):
    return [_melody(m, f"{name}[{i}]", no_overlaps) for i, m in enumerate(items)]
  return [_melody(items, name, no_overlaps)]


def _slot_steps(melodies: list[list[Note]], melody_steps, name: str, bar: int | None = None) -> int:
  """Steps each melody occupies: melody_steps, else the latest note end over all melodies,
  rounded up to whole bars (at least one) when `bar` is given."""
  longest = max((end for melody in melodies for _, end, _ in melody), default=0)
  if melody_steps is None:
    return longest if bar is None else max(1, math.ceil(longest / bar)) * bar
  steps = _checked_int(melody_steps, name, low=1)
  if steps < longest:
    raise errors.ConfigError(
      f"{name}: expected at least the last note's end, {longest} steps, got {melody_steps!r}"
    )
  return steps


def _note_name(pitch: int) -> str:
  """MIDI pitch to scientific pitch notation: 60 -> C4, 69 -> A4."""
  return f"{_NOTE_NAMES[pitch % 12]}{pitch // 12 - 1}"


# ------------------------------------------------------------------------------------------------
# MIDI


def write_midi(
  path,
  melodies,
  tempo_bpm: float = 120,
  steps_per_quarter: int = 4,
  program: int = 0,
  gap_steps: int = 0,
  melody_steps: int | None = None,
) -> pathlib.Path:
  """Writes one melody, or several one after another, as a type-1 MIDI file.

  `melodies` is one melody (a list of notes) or a list of melodies. Each melody occupies a slot of
  `melody_steps` steps (default: the latest note end over all melodies, so every melody starts on
  the same grid; pass e.g. 32 for two-bar melodies to keep trailing rests), followed by
  `gap_steps` of silence before the next one. Melody k's notes therefore start at
  k * (slot + gap_steps) steps; the file ends with the last slot. All notes play on channel 1
  with General MIDI `program` (0 is the acoustic grand piano) at constant velocity. Raises
  errors.ConfigError naming the field for a bad note (negative start, end <= start, pitch outside
  0..127, two overlapping notes of one pitch in a melody) or argument. Parent folders are
  created. Returns the path.
  """
  tracks = _melodies(melodies, "melodies", no_overlaps=True)
  # MIDI stores the tempo as microseconds per quarter note in 24 bits, so about 3.6 bpm at least.
  if (
    isinstance(tempo_bpm, bool)
    or not isinstance(tempo_bpm, numbers.Real)
    or not _MIN_BPM <= tempo_bpm <= _MAX_BPM
  ):
    raise errors.ConfigError(
      f"tempo_bpm: expected beats per minute from {_MIN_BPM} to {_MAX_BPM:g}, got {tempo_bpm!r}"
    )
  ticks_per_quarter_limit = _MAX_TICKS_PER_QUARTER // _TICKS_PER_STEP
  steps_per_quarter = _checked_int(
    steps_per_quarter, "steps_per_quarter", 1, ticks_per_quarter_limit
  )
  program = _checked_int(program, "program", 0, 127)
  gap_steps = _checked_int(gap_steps, "gap_steps", low=0)
  slot = _slot_steps(tracks, melody_steps, "melody_steps")

  # (tick, order, pitch, message): at equal ticks note-offs go first (order 0), so a note that
  # follows one of the same pitch sounds instead of being cut off by the earlier note's note-off.
  events = []
  for k, melody in enumerate(tracks):
    offset = k * (slot + gap_steps)
    for start, end, pitch in melody:
      on = mido.Message("note_on", channel=_CHANNEL, note=pitch, velocity=VELOCITY)
      off = mido.Message("note_off", channel=_CHANNEL, note=pitch, velocity=0)
      events.append(((offset + start) * _TICKS_PER_STEP, 1, pitch, on))
      events.append(((offset + end) * _TICKS_PER_STEP, 0, pitch, off))
  events.sort(key=lambda event: event[:3])
  total_ticks = (len(tracks) * slot + (len(tracks) - 1) * gap_steps) * _TICKS_PER_STEP

  midi = mido.MidiFile(type=1, ticks_per_beat=steps_per_quarter * _TICKS_PER_STEP)
  conductor = mido.MidiTrack(
    [
      mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(tempo_bpm), time=0),
      mido.MetaMessage("end_of_track", time=0),
    ]
  )
  notes = mido.MidiTrack([mido.MetaMessage("track_name", name="melody", time=0)])
  notes.append(mido.Message("program_change", channel=_CHANNEL, program=program, time=0))
  now = 0
  for tick, _, _, message in events:
    notes.append(message.copy(time=tick - now))
    now = tick
  # Ends the track at the end of the last slot, so trailing rests are part of the file's length.
  notes.append(mido.MetaMessage("end_of_track", time=max(0, total_ticks - now)))
  midi.tracks.extend([conductor, notes])

  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  midi.save(os.fspath(path))
  return path


def read_midi_notes(path, steps_per_quarter: int = 4) -> list[Note]:
  """Reads the notes of a MIDI file as (start, end, pitch) steps, sorted by start and pitch.

  Note times are rounded to the nearest step of 1/steps_per_quarter of a quarter note; a note
  shorter than half a step keeps one step. Notes of all tracks and channels are merged (write_midi
  writes one channel). A note left sounding ends with its track. Raises errors.DataError if the
  file is missing or not a readable MIDI file.
  """
  steps_per_quarter = _checked_int(steps_per_quarter, "steps_per_quarter", low=1)
  path = pathlib.Path(path)
  if not path.is_file():
    raise errors.DataError(f"{path}: MIDI file not found")
  try:
    midi = mido.MidiFile(os.fspath(path))
  except (OSError, EOFError, ValueError, KeyError, IndexError) as e:
    raise errors.DataError(f"{path}: not a readable MIDI file ({type(e).__name__}: {e})") from e
  if midi.ticks_per_beat <= 0:
    raise errors.DataError(f"{path}: timecode-based MIDI timing is not supported")

  def step(tick: int) -> int:
    return round(tick * steps_per_quarter / midi.ticks_per_beat)

  notes = []
  for track in midi.tracks:
    tick = 0
    # Sounding notes by (channel, pitch), oldest first: a note-off ends the oldest one.
    sounding: dict[tuple[int, int], list[int]] = {}
    for message in track:
      tick += message.time
      if message.type not in ("note_on", "note_off"):
        continue
      key = (message.channel, message.note)
      if message.type == "note_on" and message.velocity > 0:
        sounding.setdefault(key, []).append(tick)
      elif sounding.get(key):
        notes.append((sounding[key].pop(0), tick, message.note))
    notes.extend(
      (start, tick, pitch) for (_, pitch), starts in sounding.items() for start in starts
    )
  steps = [(step(start), max(step(end), step(start) + 1), pitch) for start, end, pitch in notes]
  return sorted(steps)


# ------------------------------------------------------------------------------------------------
# Piano roll


def piano_roll(
  path,
  rows: Mapping[str, object],
  title: str,
  steps_per_bar: int = 16,
  pitch_range: tuple[int, int] | None = None,
  melody_steps: int | None = None,
  steps_per_beat: int | None = 4,
) -> pathlib.Path:
  """Saves a PNG with one piano-roll panel per entry of `rows`, e.g. {"input": x, "output": y}.

  Each row is one melody or a list of melodies; several are drawn left to right in slots of equal
  length separated by a thick vertical line, numbered along the top (an interpolation sheet). The
  slot is `melody_steps` long, by default the latest note end over all rows rounded up to whole
  bars, and all panels share the time and pitch axes so rows line up note for note. Time runs
  along x with a bar line every `steps_per_bar` steps (bars numbered within each melody) and a
  faint line every `steps_per_beat` steps (None: no beat lines), to judge onsets by; pitch
  runs up y with the black keys shaded and each C labelled with its note name (C4 is MIDI 60).
  `pitch_range` (lowest, highest) fixes the shown pitches; by default it spans the notes with 2
  semitones to spare and at least two octaves. Row labels give the note count and how many notes
  fall outside the shown range. Parent folders are created. Returns the path.
  """
  if not isinstance(rows, Mapping) or not rows:
    raise errors.ConfigError(f"rows: expected a non-empty dict of name -> melodies, got {rows!r}")
  steps_per_bar = _checked_int(steps_per_bar, "steps_per_bar", low=1)
  if steps_per_beat is not None:
    steps_per_beat = _checked_int(steps_per_beat, "steps_per_beat", low=1)
  panels = {str(key): _melodies(value, f"rows[{key!r}]") for key, value in rows.items()}
  every = [melody for melodies in panels.values() for melody in melodies]
  slot = _slot_steps(every, melody_steps, "melody_steps", bar=steps_per_bar)
  pitches = [pitch for melody in every for _, _, pitch in melody]
  low, high = _pitch_range(pitch_range, pitches)
  ncols = max(len(melodies) for melodies in panels.values())
  total = ncols * slot
  span = high - low + 1

  width = min(30.0, max(6.0, 1.8 + total * _STEP_INCHES))
  row_height = min(6.0, max(1.4, span * _SEMITONE_INCHES))
  fig = matplotlib.figure.Figure(
    figsize=(width, 0.9 + len(panels) * row_height), dpi=_DPI, layout="constrained"
  )
  axes = fig.subplots(nrows=len(panels), ncols=1, sharex=True, sharey=True, squeeze=False)[:, 0]
  fig.suptitle(title, wrap=True)  # A long title breaks into lines instead of being clipped.
  for r, (label, melodies) in enumerate(panels.items()):
    ax = axes[r]
    _draw_keyboard_grid(ax, low, high, total, slot, steps_per_bar, steps_per_beat)
    starts, widths, heights, outside, count = [], [], [], 0, 0
    for k, melody in enumerate(melodies):
      offset = k * slot
      for start, end, pitch in melody:
        count += 1
        outside += not low <= pitch <= high
        starts.append(offset + start)
        # A little shorter than the note so repeated notes of one pitch stay separate boxes.
        widths.append(max(end - start - 0.15, 0.5))
        heights.append(pitch)
    ax.barh(
      heights,
      widths,
      left=starts,
      height=0.8,
      color=f"C{r % 10}",
      edgecolor="black",
      linewidth=0.5,
      zorder=3,
    )
    note_text = f"{count} note{'s' if count != 1 else ''}"
    if outside:
      note_text += f"\n{outside} outside\npitch range"
    ax.set_ylabel(f"{label}\n{note_text}", rotation=0, ha="right", va="center", fontsize="medium")
  _label_time_axis(axes, ncols, slot, steps_per_bar)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, format="png", dpi=_DPI)
  return path


def _pitch_range(pitch_range, pitches: list[int]) -> tuple[int, int]:
  if pitch_range is not None:
    if isinstance(pitch_range, str | bytes) or not isinstance(pitch_range, Sequence):
      raise errors.ConfigError(
        f"pitch_range: expected (lowest, highest) MIDI pitches, got {pitch_range!r}"
      )
    if len(pitch_range) != 2:
      raise errors.ConfigError(
        f"pitch_range: expected (lowest, highest) MIDI pitches, got {pitch_range!r}"
      )
    low = _checked_int(pitch_range[0], "pitch_range[0]", 0, 127)
    high = _checked_int(pitch_range[1], "pitch_range[1]", 0, 127)
    if high < low:
      raise errors.ConfigError(f"pitch_range: expected lowest <= highest, got {pitch_range!r}")
    return low, high
  # Two octaves at least, so a few notes are not stretched into huge boxes.
  low, high = (min(pitches) - 2, max(pitches) + 2) if pitches else (60 - 12, 60 + 12)
  short = 24 - (high - low)
  if short > 0:
    low, high = low - short // 2, high + (short - short // 2)
  if low < 0:
    low, high = 0, high - low
  if high > 127:
    low, high = max(0, low - (high - 127)), 127
  return low, high


def _draw_keyboard_grid(
  ax, low: int, high: int, total: int, slot: int, steps_per_bar: int, steps_per_beat: int | None
) -> None:
  """Shades black-key rows, draws octave, beat, bar and melody-boundary lines; sets limits and
  y ticks."""
  for pitch in range(low, high + 1):
    if pitch % 12 in _BLACK_KEYS:
      ax.axhspan(pitch - 0.5, pitch + 0.5, color="0.92", linewidth=0, zorder=0)
    if pitch % 12 == 0 and pitch > low:
      ax.axhline(pitch - 0.5, color="0.7", linewidth=0.6, zorder=1)
  # Beats and bars count from each melody's start, so every melody gets the same grid.
  for start in range(0, total, slot):
    for step in range(0, slot, steps_per_beat or slot):
      if step % steps_per_bar:
        ax.axvline(start + step, color="0.8", linewidth=0.5, linestyle=":", zorder=1)
    for step in range(steps_per_bar, slot, steps_per_bar):
      ax.axvline(start + step, color="0.55", linewidth=0.7, zorder=1)
  for step in range(slot, total, slot):
    ax.axvline(step, color="black", linewidth=2.0, zorder=4)
  # Each C, or every pitch where the range holds less than an octave.
  labelled = [p for p in range(low, high + 1) if p % 12 == 0 or high - low < 12]
  ax.set_yticks(labelled, [_note_name(p) for p in labelled], fontsize="small")
  ax.set_ylim(low - 0.5, high + 0.5)
  ax.set_xlim(0, total)
  ax.tick_params(axis="y", length=0)


def _label_time_axis(axes, ncols: int, slot: int, steps_per_bar: int) -> None:
  """Bar numbers below the last panel and melody numbers above the first."""
  starts = [k * slot + s for k in range(ncols) for s in range(0, slot, steps_per_bar)]
  # Every bar up to about 48 labels, then every n-th, so the numbers never run into each other.
  stride = max(1, math.ceil(len(starts) / 48))
  labels = [
    str(s % slot // steps_per_bar + 1) if i % stride == 0 else "" for i, s in enumerate(starts)
  ]
  axes[-1].set_xticks(starts, labels, fontsize="small")
  axes[-1].set_xlabel(
    f"bar ({steps_per_bar} steps each)" + (f", {ncols} melodies left to right" if ncols > 1 else "")
  )
  if ncols > 1:
    top = axes[0].secondary_xaxis("top")
    top.set_xticks([(k + 0.5) * slot for k in range(ncols)], [f"#{k + 1}" for k in range(ncols)])
    top.tick_params(length=0)


# ------------------------------------------------------------------------------------------------
# Audio


def find_soundfont(soundfont=None) -> pathlib.Path:
  """Returns the SoundFont to render with: `soundfont`, else $AEJAX_SOUNDFONT, else the first of
  DEFAULT_SOUNDFONTS that exists. Raises errors.ConfigError saying how to get one if none is
  found, or if the named file is missing or not a SoundFont (RIFF "sfbk") file."""
  if soundfont is not None:
    return _checked_soundfont(pathlib.Path(soundfont), "soundfont")
  if os.environ.get(SOUNDFONT_ENV):
    return _checked_soundfont(pathlib.Path(os.environ[SOUNDFONT_ENV]), f"${SOUNDFONT_ENV}")
  for candidate in DEFAULT_SOUNDFONTS:
    if pathlib.Path(candidate).is_file():
      return _checked_soundfont(pathlib.Path(candidate), "soundfont")
  raise errors.ConfigError(
    f"soundfont: no General MIDI SoundFont found (searched {', '.join(DEFAULT_SOUNDFONTS)}); "
    f"{_INSTALL_HINT}, or pass soundfont=PATH or set {SOUNDFONT_ENV}=PATH to an .sf2 file"
  )


def _checked_soundfont(path: pathlib.Path, name: str) -> pathlib.Path:
  how = f"pass soundfont=PATH or set {SOUNDFONT_ENV}=PATH to an .sf2 file, or {_INSTALL_HINT}"
  if not path.is_file():
    raise errors.ConfigError(f"{name}: SoundFont file not found: {path}; {how}")
  with path.open("rb") as f:
    header = f.read(12)
  if header[:4] != b"RIFF" or header[8:12] != b"sfbk":
    raise errors.ConfigError(f"{name}: {path} is not a SoundFont (.sf2) file; {how}")
  return path


def render_wav(
  midi_path,
  wav_path,
  soundfont=None,
  sample_rate: int = 44100,
  gain: float = 1.0,
) -> pathlib.Path:
  """Renders a MIDI file to a 16-bit stereo WAV with the FluidSynth program; returns wav_path.

  Runs `fluidsynth -ni -q -g GAIN -T wav -O s16 -r RATE -F WAV SOUNDFONT MIDI`. The SoundFont is
  `soundfont`, else $AEJAX_SOUNDFONT, else a default install location (see find_soundfont).
  FluidSynth keeps rendering after the last note until every voice has died away, then 2 more
  seconds (its player's grace period for reverb), so the WAV is longer than the MIDI file. The
  default gain of 1.0 (FluidSynth's own default is 0.2) keeps a single melody line in the
  piano well below clipping (peak about 0.3) while being comfortably loud. Raises
  errors.ConfigError if fluidsynth or the SoundFont is missing or the SoundFont does not load,
  saying how to install them; errors.DataError if the MIDI file is missing or not MIDI, or if
  fluidsynth fails (with its stderr). wav_path is replaced only once the render succeeded.
  """
  midi_path = pathlib.Path(midi_path)
  wav_path = pathlib.Path(wav_path)
  sample_rate = _checked_int(sample_rate, "sample_rate", *_SAMPLE_RATES)
  if isinstance(gain, bool) or not isinstance(gain, numbers.Real) or not 0 < gain < 10:
    raise errors.ConfigError(f"gain: expected a number with 0 < gain < 10, got {gain!r}")
  program = shutil.which("fluidsynth")
  if program is None:
    raise errors.ConfigError(f"render_wav: the fluidsynth program is not on PATH; {_INSTALL_HINT}")
  font = find_soundfont(soundfont)
  if not midi_path.is_file():
    raise errors.DataError(f"{midi_path}: MIDI file not found")
  with midi_path.open("rb") as f:
    if f.read(4) != b"MThd":
      raise errors.DataError(f"{midi_path}: not a MIDI file (no MThd header)")

  wav_path.parent.mkdir(parents=True, exist_ok=True)
  # Rendered next to the target and renamed, so a failed render never leaves a half-written or
  # stale file that looks like a result.
  fd, tmp_name = tempfile.mkstemp(prefix=f".{wav_path.name}.", suffix=".wav", dir=wav_path.parent)
  os.close(fd)
  tmp = pathlib.Path(tmp_name)
  command = [
    program,
    "-ni",
    "-q",
    "-g",
    f"{float(gain):g}",
    "-T",
    "wav",
    # 16-bit integer samples, which the standard library's wave module (wav_stats) reads.
    "-O",
    "s16",
    "-r",
    str(sample_rate),
    "-F",
    os.fspath(tmp),
    os.fspath(font),
    os.fspath(midi_path),
  ]
  try:
    result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    stderr = (result.stderr + result.stdout).strip()
    # FluidSynth exits 0 and renders silence when a SoundFont fails to load (e.g. a truncated
    # file), so its message is checked too.
    if "Failed to load" in stderr:
      raise errors.ConfigError(
        f"soundfont: FluidSynth could not load {font}; pass soundfont=PATH or set "
        f"{SOUNDFONT_ENV}=PATH to a valid .sf2 file. fluidsynth said:\n{stderr}"
      )
    if result.returncode != 0:
      raise errors.DataError(
        f"{midi_path}: fluidsynth exited with status {result.returncode} rendering to {wav_path}:"
        f"\n{stderr or '(no output)'}\ncommand: {' '.join(command)}"
      )
    try:
      with wave.open(os.fspath(tmp), "rb") as f:
        frames = f.getnframes()
    except (wave.Error, EOFError) as e:
      frames, stderr = 0, f"{stderr}\n{tmp} is not a WAV file: {e}".strip()
    if frames == 0:
      raise errors.DataError(
        f"{midi_path}: fluidsynth wrote no audio to {wav_path}:\n{stderr or '(no output)'}\n"
        f"command: {' '.join(command)}"
      )
    os.chmod(tmp, 0o644)  # mkstemp's file is the owner's alone; the audio is for any reader.
    os.replace(tmp, wav_path)
  finally:
    tmp.unlink(missing_ok=True)
  return wav_path


def wav_stats(path) -> dict:
  """Reads a PCM WAV file (8, 16, 24 or 32-bit integer samples) and summarises it, e.g. to check
  that a render is not silent.

  Returns {"sample_rate": Hz, "channels", "sample_width": bytes per sample, "frames",
  "duration_s", "rms", "peak", "sound_start_s", "sound_end_s"}: RMS and peak of all samples of all
  channels scaled to [-1, 1], and the times of the first and last sample louder than SILENCE
  (-60 dBFS; None for a silent file), which show where the music is within a render's silent
  tail. Raises errors.DataError if the file is missing or not a PCM WAV file.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise errors.DataError(f"{path}: WAV file not found")
  try:
    with wave.open(os.fspath(path), "rb") as f:
      rate, channels, width = f.getframerate(), f.getnchannels(), f.getsampwidth()
      data = f.readframes(f.getnframes())
  except (wave.Error, EOFError) as e:
    raise errors.DataError(f"{path}: not a readable PCM WAV file ({e})") from e
  if width not in (1, 2, 3, 4):
    raise errors.DataError(f"{path}: unsupported WAV sample width of {width} bytes")
  # A file cut short can end in the middle of a frame; the partial frame is dropped.
  data = data[: len(data) - len(data) % (width * channels)]
  samples = _pcm_to_float(data, width).reshape(-1, channels)
  loud = np.flatnonzero(np.abs(samples).max(axis=1, initial=0.0) > SILENCE)
  return {
    "sample_rate": rate,
    "channels": channels,
    "sample_width": width,
    "frames": len(samples),
    "duration_s": len(samples) / rate,
    "rms": float(np.sqrt(np.mean(samples**2))) if samples.size else 0.0,
    "peak": float(np.abs(samples).max()) if samples.size else 0.0,
    "sound_start_s": float(loud[0] / rate) if loud.size else None,
    "sound_end_s": float((loud[-1] + 1) / rate) if loud.size else None,
  }


def _pcm_to_float(data: bytes, width: int) -> np.ndarray:
  """Little-endian PCM samples to float64 in [-1, 1): 8-bit is unsigned, wider widths signed."""
  if width == 1:
    return (np.frombuffer(data, np.uint8).astype(np.float64) - 128.0) / 128.0
  if width == 3:
    raw = np.frombuffer(data, np.uint8).reshape(-1, 3).astype(np.int32)
    values = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
    values = np.where(values >= 1 << 23, values - (1 << 24), values)  # Sign of the 24-bit value.
    return values.astype(np.float64) / float(1 << 23)
  dtype = np.dtype(f"<i{width}")  # 2 or 4 bytes.
  return np.frombuffer(data, dtype).astype(np.float64) / float(2 ** (8 * width - 1))
