"""Tests for aejax.music: MIDI round trips, note checks, piano-roll PNGs, FluidSynth renders and WAV
statistics.

The render tests need the fluidsynth program and a General MIDI SoundFont (`apt-get install
fluidsynth fluid-soundfont-gm`); without them they fail with that hint rather than skip, so CI
cannot pass while never rendering anything.
"""

import collections
import pathlib
import shutil
import wave

import matplotlib.colors
import matplotlib.image as mpimg
import mido
import numpy as np
import pytest

from aejax import errors, music

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# A C major arpeggio that starts after a one-beat rest and ends on step 24: 3.0 s at 120 bpm.
ARPEGGIO = [(4, 8, 60), (8, 12, 64), (12, 16, 67), (16, 24, 72)]
# Two bars with a repeated note (steps 12-16) and a rest (steps 24-28).
TUNE = [(0, 4, 62), (4, 8, 64), (8, 12, 65), (12, 14, 67), (14, 16, 67), (16, 24, 69), (28, 32, 62)]

# FluidSynth's player runs on after the last note until no voice sounds (for the piano's release
# and reverb, 0.905 s measured with FluidR3_GM), then 2 s more (FLUID_PLAYER_STOP_GRACE_MS), so a
# piano render measured 2.905 s longer than its MIDI file at 90, 120 and 240 bpm; other programs
# measured 2.46-2.91 s. The bounds allow for other SoundFonts' release times.
TAIL_S = (2.0, 3.3)
# The audible sound (louder than -60 dBFS) measured ending 0.22-0.26 s after the last note-off
# for the piano (up to 0.6 s for strings and flute), and starting 3 ms after the first note-on.
RELEASE_S = (0.0, 0.5)
ONSET_TOLERANCE_S = 0.03
# RMS over the whole render, tail included, measured 0.031 (120 bpm) and 0.032 (240 bpm) for
# ARPEGGIO on the piano at the default gain; silence would be 0.
MIN_RMS = 0.01

Note = collections.namedtuple("Note", "start end pitch")


def _require_fluidsynth():
  if shutil.which("fluidsynth") is None:
    pytest.fail(
      "fluidsynth is not installed: apt-get install fluidsynth fluid-soundfont-gm "
      f"(or set {music.SOUNDFONT_ENV} to a General MIDI .sf2 file as well)"
    )


# ------------------------------------------------------------------------------------------------
# MIDI


def test_one_melody_round_trips_through_midi(tmp_path):
  path = music.write_midi(tmp_path / "sub" / "tune.mid", TUNE, tempo_bpm=100, program=40)
  assert path == tmp_path / "sub" / "tune.mid"
  assert path.read_bytes()[:4] == b"MThd"
  assert music.read_midi_notes(path) == sorted(TUNE)

  midi = mido.MidiFile(path)
  messages = [m for track in midi.tracks for m in track]
  assert [m.tempo for m in messages if m.type == "set_tempo"] == [mido.bpm2tempo(100)]
  assert [m.program for m in messages if m.type == "program_change"] == [40]
  assert {m.velocity for m in messages if m.type == "note_on"} == {music.VELOCITY}
  # 32 steps of a sixteenth at 100 bpm: 8 quarters of 0.6 s.
  assert midi.length == pytest.approx(8 * 0.6)


def test_notes_may_be_objects_with_start_end_pitch(tmp_path):
  notes = [Note(*note) for note in ARPEGGIO]
  path = music.write_midi(tmp_path / "a.mid", notes)
  assert music.read_midi_notes(path) == ARPEGGIO
  # numpy arrays of notes too, e.g. straight from a decoder.
  path = music.write_midi(tmp_path / "b.mid", np.array(ARPEGGIO))
  assert music.read_midi_notes(path) == ARPEGGIO


def test_several_melodies_follow_each_other_with_gaps(tmp_path):
  melodies = [ARPEGGIO, TUNE, [(0, 2, 50)]]
  path = music.write_midi(tmp_path / "seq.mid", melodies, gap_steps=8)
  # Every melody occupies the longest one's 32 steps, then 8 steps of silence.
  expected = sorted((s + k * 40, e + k * 40, p) for k, m in enumerate(melodies) for s, e, p in m)
  assert music.read_midi_notes(path) == expected
  # The file ends with the last slot: 3 * 32 + 2 * 8 steps at 120 bpm (8 steps per second).
  assert mido.MidiFile(path).length == pytest.approx((3 * 32 + 2 * 8) / 8)


def test_melody_steps_sets_the_slot_and_keeps_trailing_rests(tmp_path):
  path = music.write_midi(tmp_path / "seq.mid", [ARPEGGIO, ARPEGGIO], melody_steps=48)
  assert music.read_midi_notes(path) == sorted(
    ARPEGGIO + [(s + 48, e + 48, p) for s, e, p in ARPEGGIO]
  )
  assert mido.MidiFile(path).length == pytest.approx(96 / 8)
  with pytest.raises(errors.ConfigError, match=r"melody_steps: .*last note's end, 24 steps"):
    music.write_midi(tmp_path / "short.mid", ARPEGGIO, melody_steps=20)


def test_steps_per_quarter_sets_the_grid(tmp_path):
  triplets = [(0, 1, 60), (1, 2, 62), (2, 3, 64), (3, 6, 65)]
  path = music.write_midi(tmp_path / "t.mid", triplets, steps_per_quarter=3)
  assert music.read_midi_notes(path, steps_per_quarter=3) == triplets
  assert music.read_midi_notes(path, steps_per_quarter=6) == [
    (2 * s, 2 * e, p) for s, e, p in triplets
  ]


def test_repeated_notes_of_one_pitch_stay_separate(tmp_path):
  # The first note's note-off and the second's note-on share a tick: the off must come first.
  repeated = [(0, 4, 60), (4, 8, 60), (8, 9, 60)]
  path = music.write_midi(tmp_path / "r.mid", repeated)
  assert music.read_midi_notes(path) == repeated
  # A synthesizer given note-on before note-off would silence the new note at once.
  messages = [m for track in mido.MidiFile(path).tracks for m in track]
  kinds = [m.type for m in messages if m.type.startswith("note")]
  assert kinds == ["note_on", "note_off"] * 3


@pytest.mark.parametrize(
  "melodies, message",
  [
    (
      [(0, 4, 60), (4, 8, 128)],
      r"melodies\[1\]\.pitch: expected a MIDI pitch in 0\.\.127, got 128",
    ),
    ([(0, 4, -1)], r"melodies\[0\]\.pitch: .*got -1"),
    ([(4, 4, 60)], r"melodies\[0\]\.end: expected a step after start = 4 .*got 4"),
    ([(4, 2, 60)], r"melodies\[0\]\.end: .*got 2"),
    ([(-2, 2, 60)], r"melodies\[0\]\.start: expected a step >= 0, got -2"),
    ([(0, 1.5, 60)], r"melodies\[0\]\.end: expected an integer, got 1\.5"),
    ([(0, 4, "C4")], r"melodies\[0\]\.pitch: expected an integer, got 'C4'"),
    ([(0, 4)], r"melodies\[0\]: expected a note \(start, end, pitch\)"),
    ([ARPEGGIO, [(0, 4, 60), (2, 6, 60)]], r"melodies\[1\]\[1\]: overlaps melodies\[1\]\[0\]"),
    ([ARPEGGIO, [(0, 2, 60), (2, 4, 200)]], r"melodies\[1\]\[1\]\.pitch: .*got 200"),
    ([Note(0, 4, 60), Note(4, 8, 130)], r"melodies\[1\]\.pitch: .*got 130"),
    ("C D E", r"melodies: expected a melody"),
  ],
)
def test_bad_notes_raise_config_error_naming_the_note(tmp_path, melodies, message):
  with pytest.raises(errors.ConfigError, match=message):
    music.write_midi(tmp_path / "bad.mid", melodies)
  assert not (tmp_path / "bad.mid").exists()


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"program": 128}, r"program: expected an integer in 0\.\.127"),
    ({"gap_steps": -1}, r"gap_steps: expected an integer >= 0"),
    ({"tempo_bpm": 0}, r"tempo_bpm: "),
    ({"tempo_bpm": float("nan")}, r"tempo_bpm: "),
    ({"steps_per_quarter": 0}, r"steps_per_quarter: "),
  ],
)
def test_bad_midi_arguments_raise_config_error(tmp_path, kwargs, message):
  with pytest.raises(errors.ConfigError, match=message):
    music.write_midi(tmp_path / "bad.mid", ARPEGGIO, **kwargs)


def test_reading_a_missing_or_broken_midi_file_raises_data_error(tmp_path):
  with pytest.raises(errors.DataError, match="MIDI file not found"):
    music.read_midi_notes(tmp_path / "missing.mid")
  (tmp_path / "text.mid").write_text("not midi")
  with pytest.raises(errors.DataError, match="not a readable MIDI file"):
    music.read_midi_notes(tmp_path / "text.mid")


# ------------------------------------------------------------------------------------------------
# Piano roll


def _read_png(path) -> np.ndarray:
  """Checks path is a PNG with something drawn on it and returns its RGB pixels."""
  path = pathlib.Path(path)
  assert path.read_bytes()[:8] == _PNG_SIGNATURE
  pixels = mpimg.imread(path)
  assert pixels.ndim == 3 and pixels.shape[-1] in (3, 4)
  rgb = pixels[..., :3]
  # A blank page is a valid PNG too: some pixels must differ from the white background.
  assert (np.abs(rgb - 1.0).max(axis=-1) > 0.1).mean() > 0.01
  return rgb


def _colour_pixels(rgb: np.ndarray, colour: str) -> np.ndarray:
  """Mask of pixels within a small distance of a matplotlib colour (the note fill)."""
  target = np.array(matplotlib.colors.to_rgb(colour), np.float32)
  return np.abs(rgb - target).max(axis=-1) < 0.02


def test_piano_roll_draws_one_panel_per_row(tmp_path):
  path = music.piano_roll(
    tmp_path / "figs" / "recon.png",
    {"input": TUNE, "reconstruction": [Note(*n) for n in TUNE[:-1]]},
    title="step 1000: input vs reconstruction",
  )
  assert path == tmp_path / "figs" / "recon.png"
  rgb = _read_png(path)
  height, width = rgb.shape[:2]
  # Two panels of two octaves and two bars each: about 600 x 600 pixels at 100 dpi.
  assert 400 <= height <= 1200 and 500 <= width <= 1200
  # Notes are filled with C0 in the first row and C1 in the second, each within its own half.
  first, second = _colour_pixels(rgb, "C0"), _colour_pixels(rgb, "C1")
  assert first.sum() > 500 and second.sum() > 500
  assert np.nonzero(first)[0].max() < height / 2 < np.nonzero(second)[0].min()


def test_piano_roll_sheet_draws_melodies_left_to_right(tmp_path):
  interpolation = [[(s, e, p + 2 * k) for s, e, p in ARPEGGIO] for k in range(5)]
  endpoints = [ARPEGGIO, [], [], [], TUNE]

  def draw(name, first_row):
    rows = {"interpolation": first_row, "endpoints": endpoints}
    path = music.piano_roll(tmp_path / name, rows, title="interpolation", melody_steps=32)
    return _read_png(path)

  sheet = draw("sheet.png", interpolation)
  first_only = draw("first.png", interpolation[:1] + [[]] * 4)
  single = _read_png(music.piano_roll(tmp_path / "one.png", {"a": ARPEGGIO}, title="one"))
  # Five 32-step slots are drawn wider than one 32-step melody.
  assert sheet.shape == first_only.shape and sheet.shape[1] > 2 * single.shape[1]
  # Same layout, five melodies of equal note lengths instead of one: five times the note pixels.
  notes_sheet, notes_first = _colour_pixels(sheet, "C0"), _colour_pixels(first_only, "C0")
  assert notes_first.sum() > 200
  assert notes_sheet.sum() == pytest.approx(5 * notes_first.sum(), rel=0.1)
  # Left to right: the sheet starts where the first melody does and reaches 4 slots further. The
  # first melody spans steps 4..24, the sheet steps 4..4 * 32 + 24, 7.4 times as wide.
  first_columns = np.nonzero(notes_first.any(axis=0))[0]
  sheet_columns = np.nonzero(notes_sheet.any(axis=0))[0]
  assert sheet_columns.min() == first_columns.min()
  first_span = first_columns.max() - first_columns.min()
  assert sheet_columns.max() - sheet_columns.min() == pytest.approx(7.4 * first_span, rel=0.05)


def test_piano_roll_pitch_range_and_bad_arguments(tmp_path):
  # Two notes far apart with a range that shows only the lower one: still a valid picture.
  path = music.piano_roll(
    tmp_path / "p.png", {"x": [(0, 16, 40), (0, 16, 100)]}, title="range", pitch_range=(36, 48)
  )
  _read_png(path)
  with pytest.raises(errors.ConfigError, match="rows: expected a non-empty dict"):
    music.piano_roll(tmp_path / "e.png", {}, title="empty")
  with pytest.raises(errors.ConfigError, match=r"pitch_range: expected lowest <= highest"):
    music.piano_roll(tmp_path / "e.png", {"x": TUNE}, title="t", pitch_range=(70, 60))
  with pytest.raises(errors.ConfigError, match=r"rows\['x'\]\[1\]\.pitch: .*got 300"):
    music.piano_roll(tmp_path / "e.png", {"x": [(0, 4, 60), (4, 8, 300)]}, title="t")


# ------------------------------------------------------------------------------------------------
# Audio


@pytest.mark.parametrize("tempo_bpm", [120, 240])
def test_render_wav_is_audible_and_as_long_as_the_melody(tmp_path, tempo_bpm):
  _require_fluidsynth()
  midi = music.write_midi(tmp_path / "a.mid", ARPEGGIO, tempo_bpm=tempo_bpm)
  wav = music.render_wav(midi, tmp_path / "out" / "a.wav")
  assert wav == tmp_path / "out" / "a.wav"
  assert sorted(p.name for p in wav.parent.iterdir()) == ["a.wav"]  # No temporary file left.

  stats = music.wav_stats(wav)
  seconds_per_step = 60 / tempo_bpm / 4
  first_on, last_off = 4 * seconds_per_step, 24 * seconds_per_step
  assert stats["sample_rate"] == 44100 and stats["channels"] == 2
  assert stats["rms"] > MIN_RMS
  assert 0.1 < stats["peak"] < 0.99  # Loud enough, and not clipped.
  assert TAIL_S[0] <= stats["duration_s"] - last_off <= TAIL_S[1]
  assert stats["sound_start_s"] == pytest.approx(first_on, abs=ONSET_TOLERANCE_S)
  assert RELEASE_S[0] <= stats["sound_end_s"] - last_off <= RELEASE_S[1]


def test_render_wav_sample_rate(tmp_path):
  _require_fluidsynth()
  midi = music.write_midi(tmp_path / "a.mid", [(0, 2, 69)])
  stats = music.wav_stats(music.render_wav(midi, tmp_path / "a.wav", sample_rate=22050))
  assert stats["sample_rate"] == 22050 and stats["rms"] > 0.001
  assert (tmp_path / "a.wav").stat().st_mode & 0o777 == 0o644  # Readable by others.
  with pytest.raises(
    errors.ConfigError, match=r"sample_rate: expected an integer in 8000\.\.96000"
  ):
    music.render_wav(midi, tmp_path / "b.wav", sample_rate=4000)


def test_render_wav_names_a_missing_soundfont(tmp_path, monkeypatch):
  _require_fluidsynth()
  midi = music.write_midi(tmp_path / "a.mid", ARPEGGIO)
  missing = tmp_path / "missing.sf2"
  with pytest.raises(errors.ConfigError) as info:
    music.render_wav(midi, tmp_path / "a.wav", soundfont=missing)
  message = str(info.value)
  assert message.startswith("soundfont: SoundFont file not found")
  assert str(missing) in message
  assert "AEJAX_SOUNDFONT" in message and "apt-get install fluidsynth fluid-soundfont-gm" in message

  monkeypatch.setenv(music.SOUNDFONT_ENV, str(missing))
  with pytest.raises(errors.ConfigError, match=r"^\$AEJAX_SOUNDFONT: SoundFont file not found"):
    music.render_wav(midi, tmp_path / "a.wav")
  assert not (tmp_path / "a.wav").exists()


def test_render_wav_rejects_a_file_that_is_not_a_soundfont(tmp_path):
  _require_fluidsynth()
  midi = music.write_midi(tmp_path / "a.mid", ARPEGGIO)
  (tmp_path / "text.sf2").write_text("not a soundfont")
  with pytest.raises(errors.ConfigError, match=r"is not a SoundFont \(\.sf2\) file"):
    music.render_wav(midi, tmp_path / "a.wav", soundfont=tmp_path / "text.sf2")
  # A truncated SoundFont passes the header check; FluidSynth then renders silence and exits 0,
  # which must not pass for a result.
  with music.find_soundfont().open("rb") as f:
    (tmp_path / "cut.sf2").write_bytes(f.read(100_000))
  with pytest.raises(errors.ConfigError, match=r"(?s)could not load .*cut\.sf2.*Failed to load"):
    music.render_wav(midi, tmp_path / "a.wav", soundfont=tmp_path / "cut.sf2")
  assert not (tmp_path / "a.wav").exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mid", "cut.sf2", "text.sf2"]


def test_render_wav_without_fluidsynth_says_how_to_install_it(tmp_path, monkeypatch):
  midi = music.write_midi(tmp_path / "a.mid", ARPEGGIO)
  monkeypatch.setenv("PATH", str(tmp_path / "empty"))
  with pytest.raises(
    errors.ConfigError, match="fluidsynth program is not on PATH.*apt-get install"
  ):
    music.render_wav(midi, tmp_path / "a.wav")


def test_render_wav_rejects_a_file_that_is_not_midi(tmp_path):
  _require_fluidsynth()
  (tmp_path / "a.mid").write_text("not midi")
  with pytest.raises(errors.DataError, match="not a MIDI file"):
    music.render_wav(tmp_path / "a.mid", tmp_path / "a.wav")


def _write_wav(path, samples: np.ndarray, rate: int, width: int) -> None:
  """Writes float samples (frames, channels) in [-1, 1) as little-endian PCM."""
  scale = 2 ** (8 * width - 1)
  ints = np.round(samples * scale).astype(np.int64).reshape(-1)
  if width == 1:
    data = (ints + 128).astype(np.uint8).tobytes()
  else:
    # Low bytes of each little-endian int64 are the sample's two's complement.
    data = ints.astype("<i8").view(np.uint8).reshape(-1, 8)[:, :width].tobytes()
  with wave.open(str(path), "wb") as f:
    f.setnchannels(samples.shape[1])
    f.setsampwidth(width)
    f.setframerate(rate)
    f.writeframes(data)


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_wav_stats_of_a_known_sine(tmp_path, width):
  rate = 8000
  t = np.arange(rate // 2) / rate  # 0.5 s
  sine = 0.5 * np.sin(2 * np.pi * 440 * t)
  silence = np.zeros(rate // 4)
  left = np.concatenate([silence, sine, silence])
  _write_wav(tmp_path / "s.wav", np.stack([left, -left], axis=1), rate, width)
  stats = music.wav_stats(tmp_path / "s.wav")
  assert stats["sample_rate"] == rate and stats["channels"] == 2
  assert stats["sample_width"] == width and stats["frames"] == len(left)
  assert stats["duration_s"] == pytest.approx(1.0)
  # The sine's RMS is 0.5 / sqrt(2) over its half of the file; 8-bit steps are 1/128.
  tolerance = 0.01 if width == 1 else 1e-4
  assert stats["rms"] == pytest.approx(0.5 / np.sqrt(2) * np.sqrt(0.5), abs=tolerance)
  assert stats["peak"] == pytest.approx(0.5, abs=tolerance)
  assert stats["sound_start_s"] == pytest.approx(0.25, abs=0.002)
  assert stats["sound_end_s"] == pytest.approx(0.75, abs=0.002)


def test_wav_stats_of_silence_and_of_a_bad_file(tmp_path):
  _write_wav(tmp_path / "quiet.wav", np.zeros((800, 1)), 8000, 2)
  stats = music.wav_stats(tmp_path / "quiet.wav")
  assert stats["rms"] == 0.0 and stats["peak"] == 0.0
  assert stats["sound_start_s"] is None and stats["sound_end_s"] is None
  (tmp_path / "bad.wav").write_bytes(b"RIFF0000WAVEnope")
  with pytest.raises(errors.DataError, match="not a readable PCM WAV file"):
    music.wav_stats(tmp_path / "bad.wav")
  with pytest.raises(errors.DataError, match="WAV file not found"):
    music.wav_stats(tmp_path / "missing.wav")
