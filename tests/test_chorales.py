"""Tests for aejax.chorales: the melody encoding, windows, parsing the corpus, split and cache."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aejax import chorales, data, errors
from aejax.chorales import Note

# A few 4/4 chorales (bwv66.6 has a one-beat pickup, bwv1.6 puts a horn part before the
# soprano) and bwv11.6, which is in 3/4 and must be skipped.
SUBSET = ("bwv1.6", "bwv10.7", "bwv101.7", "bwv26.6", "bwv40.8", "bwv66.6", "bwv7.7", "bwv11.6")


def _on(pitch: int) -> int:
  return chorales.FIRST_PITCH_TOKEN + pitch - chorales.MIN_PITCH


def _clip(notes, start: int, stop: int) -> list[Note]:
  """The notes sounding in steps [start, stop), cut to that span and moved to start at 0."""
  return [
    Note(max(n.start, start) - start, min(n.end, stop) - start, n.pitch)
    for n in notes
    if n.start < stop and n.end > start
  ]


@st.composite
def melodies(draw, max_notes: int = 12):
  """(notes, num_steps): a random monophonic melody, gaps and repeated pitches included."""
  notes, step = [], 0
  for _ in range(draw(st.integers(0, max_notes))):
    step += draw(st.integers(0, 5))  # A rest before the note, often none.
    length = draw(st.integers(1, 20))
    pitch = draw(st.integers(chorales.MIN_PITCH, chorales.MAX_PITCH))
    notes.append(Note(step, step + length, pitch))
    step += length
  return notes, step + draw(st.integers(0, 40))


def test_vocabulary():
  assert (chorales.NOTE_OFF, chorales.NO_EVENT, chorales.FIRST_PITCH_TOKEN) == (0, 1, 2)
  assert (chorales.MIN_PITCH, chorales.MAX_PITCH) == (31, 87)
  assert chorales.VOCAB_SIZE == 2 + 57
  assert chorales.STEPS_PER_BAR == 4 * chorales.STEPS_PER_QUARTER == 16


def test_hand_written_melody_has_the_known_tokens():
  # MIDI 60 -> 2 + 60 - 31 = 31, 62 -> 33, 64 -> 35. The D stops a step before the E: NOTE_OFF.
  notes = [Note(0, 4, 60), Note(4, 6, 62), Note(7, 12, 64)]
  expected = [31, 1, 1, 1, 33, 1, 0, 35, 1, 1, 1, 1, 0, 1, 1, 1]
  tokens = chorales.encode_melody(notes, 16)
  assert tokens.dtype == np.int32
  assert tokens.tolist() == expected
  assert chorales.decode_melody(np.array(expected)) == notes
  # A leading rest is NO_EVENT; a repeated pitch is a second note-on; the last G sounds to the
  # end, so no NOTE_OFF follows it.
  notes = [Note(2, 5, 67), Note(5, 8, 67)]
  assert chorales.encode_melody(notes, 8).tolist() == [1, 1, 38, 1, 1, 38, 1, 1]
  assert chorales.decode_melody([1, 1, 38, 1, 1, 38, 1, 1]) == notes
  assert chorales.encode_melody([], 3).tolist() == [1, 1, 1]
  assert chorales.decode_melody([1, 0, 1]) == []  # NOTE_OFF in silence changes nothing.


@settings(max_examples=200, deadline=None)
@given(melodies())
def test_random_melodies_round_trip(melody):
  notes, num_steps = melody
  tokens = chorales.encode_melody(notes, num_steps)
  assert tokens.shape == (num_steps,)
  assert chorales.decode_melody(tokens) == notes
  # Order of the input does not matter.
  assert np.array_equal(chorales.encode_melody(notes[::-1], num_steps), tokens)


@settings(max_examples=100, deadline=None)
@given(melodies(max_notes=20), st.integers(1, 3), st.integers(1, 2))
def test_each_window_is_the_encoding_of_its_clipped_notes(melody, bars, hop_bars):
  notes, num_steps = melody
  num_steps = -(-num_steps // 16) * 16
  tokens = chorales.encode_melody(notes, num_steps)
  length = bars * 16
  windows_NxT = chorales.windows(tokens, bars, hop_bars)
  assert windows_NxT.shape[1:] == (length,) and windows_NxT.dtype == np.int32
  kept = []
  for start in range(0, num_steps - length + 1, hop_bars * 16):
    clipped = _clip(notes, start, start + length)
    if sum(n.end - n.start for n in clipped) * 2 >= length:  # At most half silent.
      kept.append(clipped)
  assert len(windows_NxT) == len(kept)
  for window, clipped in zip(windows_NxT, kept, strict=True):
    assert chorales.decode_melody(window) == clipped
    assert np.array_equal(chorales.encode_melody(clipped, length), window)


def test_windows_start_mid_note_and_drop_mostly_silent_ones():
  # Bar 1 starts inside the D (a fresh note-on); bar 2 starts on the NOTE_OFF after a note
  # that ends on its bar line (NO_EVENT); bar 3 sounds for 8 of 16 steps (kept), bar 4 for 7.
  notes = [Note(0, 10, 60), Note(10, 32, 62), Note(34, 48, 64), Note(52, 60, 65)]
  notes.append(Note(73, 80, 67))
  tokens = chorales.encode_melody(notes, 80)
  assert tokens[16] == chorales.NO_EVENT and tokens[32] == chorales.NOTE_OFF
  windows_NxT = chorales.windows(tokens, 1)
  assert len(windows_NxT) == 4
  assert windows_NxT[1, 0] == _on(62) and windows_NxT[2, 0] == chorales.NO_EVENT
  assert chorales.decode_melody(windows_NxT[1]) == [Note(0, 16, 62)]
  assert chorales.decode_melody(windows_NxT[3]) == [Note(4, 12, 65)]
  # Hops of two bars keep bars 0 and 2. Of the 2-bar windows, the one at step 48 sounds for
  # 8 + 7 of its 32 steps and goes.
  assert np.array_equal(chorales.windows(tokens, 1, hop_bars=2), windows_NxT[[0, 2]])
  assert len(chorales.windows(tokens, 2)) == 3
  assert chorales.windows(tokens[:15], 1).shape == (0, 16)


def test_bad_input_raises_errors_naming_the_problem():
  with pytest.raises(errors.DataError, match="overlap"):
    chorales.encode_melody([Note(0, 4, 60), Note(3, 6, 62)], 8)
  with pytest.raises(errors.DataError, match="pitch 30 out of range.*31..87"):
    chorales.encode_melody([Note(0, 4, 30)], 8)
  with pytest.raises(errors.DataError, match="pitch 88 out of range"):
    chorales.encode_melody([Note(0, 4, 88)], 8)
  with pytest.raises(errors.DataError, match="past the melody's 8 steps"):
    chorales.encode_melody([Note(4, 9, 60)], 8)
  with pytest.raises(errors.DataError, match="empty"):
    chorales.encode_melody([Note(4, 4, 60)], 8)
  with pytest.raises(errors.ConfigError, match="num_steps"):
    chorales.encode_melody([], -1)
  with pytest.raises(errors.DataError, match=r"0\.\.58.*\[59\]"):
    chorales.decode_melody([1, 59])
  with pytest.raises(errors.DataError, match="one \\(T,\\) sequence"):
    chorales.decode_melody(np.ones((2, 3), np.int32))
  with pytest.raises(errors.ConfigError, match="bars"):
    chorales.windows(np.ones(32, np.int32), 0)
  with pytest.raises(errors.ConfigError, match="hop_bars"):
    chorales.windows(np.ones(32, np.int32), 1, hop_bars=0)
  with pytest.raises(errors.ConfigError, match="voice must be 0..3"):
    chorales.parse_chorale("bwv66.6.mxl", voice=4)
  with pytest.raises(errors.DataError, match="does not exist"):
    chorales.parse_chorale("no/such/chorale.mxl")
  with pytest.raises(errors.ConfigError, match="test_fraction"):
    chorales.split_chorales(["a", "b"], test_fraction=1.0)


def test_transpose_shifts_note_ons_and_refuses_to_leave_the_range():
  notes = [Note(0, 4, 60), Note(6, 8, chorales.MAX_PITCH - 2), Note(8, 16, 40)]
  tokens = chorales.encode_melody(notes, 16)
  up = chorales.transpose(tokens, 2)
  assert chorales.decode_melody(up) == [Note(s, e, p + 2) for s, e, p in notes]
  # Only note-ons move: NOTE_OFF and NO_EVENT stay where they were.
  assert np.array_equal(up < chorales.FIRST_PITCH_TOKEN, tokens < chorales.FIRST_PITCH_TOKEN)
  assert np.array_equal(up[tokens < 2], tokens[tokens < 2])
  assert chorales.transpose(tokens, 3) is None  # MAX_PITCH + 1.
  assert chorales.decode_melody(chorales.transpose(tokens, -9))[2].pitch == chorales.MIN_PITCH
  assert chorales.transpose(tokens, -10) is None  # MIN_PITCH - 1.
  assert np.array_equal(chorales.transpose(tokens, 0), tokens)
  # A batch of windows moves together; silence transposes to itself.
  batch = np.stack([tokens, np.ones(16, np.int32)])
  assert np.array_equal(chorales.transpose(batch, -1)[0], chorales.transpose(tokens, -1))
  assert np.array_equal(chorales.transpose(np.ones(16, np.int32), 50), np.ones(16))


def test_split_is_by_chorale_deterministic_and_complete():
  names = [f"bwv{i}.6" for i in range(100)]
  train, test = chorales.split_chorales(names, test_fraction=0.1, seed=3)
  assert len(test) == 10 and len(train) == 90
  assert not set(train) & set(test)
  assert sorted(train + test) == sorted(names)
  assert (train, test) == chorales.split_chorales(reversed(names), test_fraction=0.1, seed=3)
  assert test != chorales.split_chorales(names, test_fraction=0.1, seed=4)[1]
  assert chorales.split_chorales(names, test_fraction=0.0) == (sorted(names), [])


def test_importing_the_module_does_not_import_music21():
  code = "import sys, aejax.chorales; sys.exit('music21' in sys.modules)"
  assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def _path(name: str):
  return next(p for p in chorales.corpus_paths() if p.name == name + ".mxl")


def test_real_chorale_phrase_round_trips():
  notes = chorales.parse_chorale(_path("bwv66.6"))
  # The soprano opens with a one-beat pickup, C#5 B4 in eighths, on beat 4 of bar 0.
  assert notes[:4] == [Note(12, 14, 73), Note(14, 16, 71), Note(16, 20, 69), Note(20, 24, 71)]
  assert all(a.end <= b.start for a, b in zip(notes, notes[1:], strict=False))
  tokens = chorales.melody_tokens(notes)
  assert len(tokens) % 16 == 0 and len(tokens) >= notes[-1].end
  first_two_bars = chorales.windows(tokens, 2)[0]
  clipped = _clip(notes, 0, 32)
  assert clipped[0] == Note(12, 14, 73) and clipped[-1].end == 32
  assert chorales.decode_melody(first_two_bars) == clipped
  assert np.array_equal(chorales.encode_melody(clipped, 32), first_two_bars)
  assert chorales.decode_melody(tokens) == notes


def test_parse_picks_voices_by_name_and_skips_other_metres():
  # bwv1.6's first part is a horn; the soprano is the second part and the bass the fifth.
  soprano = chorales.parse_chorale(_path("bwv1.6"), voice=0)
  bass = chorales.parse_chorale(_path("bwv1.6"), voice=3)
  assert soprano and bass
  assert min(n.pitch for n in soprano) > max(n.pitch for n in bass)
  assert chorales.parse_chorale(_path("bwv11.6")) is None  # 3/4.
  assert chorales.parse_chorale(_path("bwv846")) is None  # A keyboard prelude: no soprano.


@pytest.fixture(scope="module")
def dataset():
  return chorales.build_dataset(bars=2, transpositions=(-2, 0, 3), test_fraction=0.3, names=SUBSET)


def test_dataset_windows_split_and_transpositions(dataset):
  names = dataset["names"].tolist()
  assert names == sorted(set(SUBSET) - {"bwv11.6"})
  assert dataset["skipped_names"].tolist() == ["bwv11.6"]
  assert "3/4" in dataset["skipped_reasons"][0]
  train_names, test_names = dataset["train_names"].tolist(), dataset["test_names"].tolist()
  assert (train_names, test_names) == chorales.split_chorales(names, 0.3, 0)
  assert len(test_names) == 2

  for split in ("train", "test"):
    windows_NxT = dataset[split]
    assert windows_NxT.dtype == np.int32 and windows_NxT.shape[1] == 32
    assert windows_NxT.min() >= 0 and windows_NxT.max() < chorales.VOCAB_SIZE
    assert len(dataset[f"{split}_chorale"]) == len(windows_NxT)
  assert {names[i] for i in dataset["train_chorale"]} == set(train_names)
  assert {names[i] for i in dataset["test_chorale"]} == set(test_names)

  for index, name in enumerate(names):
    expected = chorales.windows(chorales.melody_tokens(chorales.parse_chorale(_path(name))), 2)
    assert len(expected) > 0
    if name in test_names:
      assert np.array_equal(dataset["test"][dataset["test_chorale"] == index], expected)
      continue
    rows = dataset["train_chorale"] == index
    for semitones in (-2, 0, 3):
      moved = [chorales.transpose(window, semitones) for window in expected]
      moved = [window for window in moved if window is not None]
      shifted = dataset["train"][rows & (dataset["train_transposition"] == semitones)]
      assert np.array_equal(shifted, np.reshape(moved, (-1, 32)))


def test_cache_is_read_back_instead_of_parsing_again(tmp_path, monkeypatch):
  names = ("bwv66.6", "bwv10.7", "bwv11.6")
  built = chorales.load_dataset(tmp_path, bars=4, names=names)
  path = chorales.cache_path(tmp_path, bars=4)
  assert path.name == "chorales_0_4bar.npz" and path.is_file()
  assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # No temporary file left.
  assert built["train"].shape[1] == 64

  parse = chorales._parse

  def refuse(*args):
    raise AssertionError("the cache should have been read, not the corpus")

  monkeypatch.setattr(chorales, "_parse", refuse)
  again = chorales.load_dataset(tmp_path, bars=4, names=names)
  assert again.keys() == built.keys()
  for key in built:
    assert np.array_equal(again[key], built[key]), key

  # Other settings or a damaged file make load_dataset build the file again.
  with pytest.raises(AssertionError, match="not the corpus"):
    chorales.load_dataset(tmp_path, bars=4, names=names, seed=1)
  monkeypatch.setattr(chorales, "_parse", parse)
  path.write_bytes(b"not an npz")
  rebuilt = chorales.load_dataset(tmp_path, bars=4, names=names)
  assert np.array_equal(rebuilt["train"], built["train"])
  monkeypatch.setattr(chorales, "_parse", refuse)
  assert np.array_equal(chorales.load_dataset(tmp_path, bars=4, names=names)["test"], built["test"])


def test_a_sequence_set_is_seen_as_one_hot_images_and_loads_by_name(tmp_path, monkeypatch):
  """aejax.data: the chorale windows are a SequenceSet, int32 tokens on the device and one-hot
  (T, 1, V) "images" to the trainer, cached in the data dir."""
  tokens = np.array([[2, 1, 0, 1], [3, 3, 1, 0]], np.int32)
  sequences = data.SequenceSet(tokens=tokens, vocab_size=5, name="toy", split="train")
  assert sequences.image_shape == (4, 1, 5) and sequences.num_examples == 2
  assert sequences.stored is tokens and sequences.labels is None
  one_hot = np.asarray(sequences.render(tokens, None))
  assert one_hot.shape == (2, 4, 1, 5) and np.array_equal(one_hot.argmax(-1)[:, :, 0], tokens)
  assert np.array_equal(sequences.images, one_hot)
  with pytest.raises(errors.DataError, match=r"toy/train .*tokens must lie in \[0, 3\)"):
    data.SequenceSet(tokens=tokens, vocab_size=3, name="toy", split="train")
  with pytest.raises(errors.DataError, match=r"int32 numpy array of shape \(N, T\)"):
    data.SequenceSet(tokens=tokens[0], vocab_size=5, name="toy", split="train")

  # By name, from the cache in <data dir>/bach-chorales (built here from a few chorales).
  real_build = chorales.build_dataset
  monkeypatch.setattr(chorales, "build_dataset", lambda *args: real_build(*args[:5], names=SUBSET))
  train = data.load("bach_soprano_2bar", "train", data_dir=tmp_path)
  test = data.load("bach_soprano_2bar", "test", data_dir=tmp_path, limit=3)
  assert isinstance(train, data.SequenceSet) and train.image_shape == (32, 1, chorales.VOCAB_SIZE)
  assert test.num_examples == 3 and test.source == "music21"
  assert list((tmp_path / "bach-chorales").glob("*.npz"))
  with pytest.raises(errors.DataError, match="unknown split 'valid'"):
    data.load("bach_soprano_2bar", "valid", data_dir=tmp_path)
