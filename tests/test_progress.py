"""Tests for aejax.progress: plain timed log lines in files, a tqdm bar in terminals."""

import io
import logging
import re
import time

import pytest
import tqdm

from aejax import progress


class FakeClock:
  def __init__(self, now: float = 1000.0):
    self.now = now

  def __call__(self) -> float:
    return self.now

  def advance(self, seconds: float) -> None:
    self.now += seconds


@pytest.fixture
def lines(caplog):
  """The messages progress logged, in order."""
  caplog.set_level(logging.INFO, logger="aejax.progress")
  return lambda: [r.getMessage() for r in caplog.records if r.name == "aejax.progress"]


def test_file_lines_at_the_interval_and_at_the_end(lines):
  clock, stream = FakeClock(), io.StringIO()
  with progress.Progress(
    100, unit="images", desc="bounds", interval=10, is_terminal=False, stream=stream, clock=clock
  ) as bar:
    for _ in range(50):  # 2 images/s for 25 s: lines at 10 s and 20 s, none in between.
      clock.advance(0.5)
      bar.update(1, loss=1.23456)
    assert len(lines()) == 2
    clock.advance(1.0)
    bar.update(50)
  logged = lines()
  assert len(logged) == 3
  first = "bounds: 20/100 images (20.0%), 2.00 images/s, ETA 40 s, elapsed 10 s, loss=1.235"
  assert logged[0] == first
  assert logged[1].startswith("bounds: 40/100 images (40.0%), 2.00 images/s, ETA 30 s, elapsed")
  # The final line: everything done, the average rate over the whole loop, the total time.
  assert logged[2] == "bounds: 100/100 images (100.0%), 3.85 images/s, done in 26 s, loss=1.235"
  assert stream.getvalue() == ""  # No bar, no frames: only log records.
  assert not any("\r" in line for line in logged)


def test_rate_and_eta_follow_the_recent_window(lines):
  # A slow first update (compilation) must not drag the rate down for the rest of the loop.
  clock = FakeClock()
  bar = progress.Progress(1000, unit="steps", interval=10, is_terminal=False, clock=clock)
  clock.advance(30)
  bar.update(1)
  for _ in range(80):
    clock.advance(0.125)
    bar.update(1)
  bar.close()
  first, second, final = lines()
  assert first == "1/1000 steps (0.1%), 0.03 steps/s, ETA 8 h 19 min, elapsed 30 s"
  assert second == "81/1000 steps (8.1%), 8.00 steps/s, ETA 1 min 55 s, elapsed 40 s"
  assert re.fullmatch(r"81/1000 steps \(8\.1%\), 2\.0\d steps/s, done in 40 s", final)


def test_uneven_batches_give_a_steady_rate(lines):
  # Batches of 256 images taking 4 s and 8 s by turns: the rate averages from the first line,
  # so it does not swing with whichever batch the window happened to hold.
  clock = FakeClock()
  bar = progress.Progress(10000, unit="images", interval=10, is_terminal=False, clock=clock)
  clock.advance(30)  # The first batch compiles.
  bar.update(256)
  for seconds in (4, 8, 4, 8):
    clock.advance(seconds)
    bar.update(256)
  first, second, third = lines()
  assert first.startswith("256/10000 images (2.6%), 8.53 images/s, ")
  assert second.startswith("768/10000 images (7.7%), 42.7 images/s, ETA 3 min 36 s")
  assert third.startswith("1280/10000 images (12.8%), 42.7 images/s, ETA 3 min 24 s")


def test_unknown_total_and_resumed_loop(lines):
  clock = FakeClock()
  with progress.Progress(None, unit="steps", interval=5, is_terminal=False, clock=clock) as bar:
    clock.advance(5)
    bar.update(10)
  with progress.Progress(
    100, unit="steps", initial=60, interval=5, is_terminal=False, clock=clock
  ) as bar:
    clock.advance(5)
    bar.update(20)
  unknown, unknown_final, resumed, resumed_final = lines()
  assert unknown == "10 steps, 2.00 steps/s, elapsed 5.0 s" and "ETA" not in unknown
  assert unknown_final == "10 steps, 2.00 steps/s, done in 5.0 s"
  # Percent and ETA count the steps before the resume, the rate only the steps of this run.
  assert resumed == "80/100 steps (80.0%), 4.00 steps/s, ETA 5.0 s, elapsed 5.0 s"
  assert resumed_final.startswith("80/100 steps (80.0%), 4.00 steps/s, done in 5.0 s")


def test_disabled_reports_nothing(lines):
  stream = io.StringIO()
  with progress.Progress(10, enabled=False, is_terminal=True, stream=stream) as bar:
    bar.update(10)
  with progress.Progress(10, enabled=False, is_terminal=False) as bar:
    bar.update(10)
  assert lines() == [] and stream.getvalue() == ""


def test_terminal_gets_a_tqdm_bar(lines):
  stream = io.StringIO()
  with progress.Progress(4, unit="steps", desc="train", is_terminal=True, stream=stream) as bar:
    assert isinstance(bar._bar, tqdm.tqdm)
    for _ in range(4):
      bar.update(1, loss=0.5)
  text = stream.getvalue()
  assert "train" in text and "4/4" in text and "loss=0.5" in text and "\r" in text
  assert lines() == []  # The bar replaces the log lines.


def test_terminal_detection():
  class Tty(io.StringIO):
    def isatty(self):
      return True

  closed = io.StringIO()
  closed.close()
  assert progress.stream_is_terminal(Tty()) is True
  assert progress.stream_is_terminal(io.StringIO()) is False
  assert progress.stream_is_terminal(closed) is False
  assert progress.stream_is_terminal(object()) is False
  bar = progress.Progress(3, stream=Tty())  # Asked of the stream when not injected.
  assert bar._bar is not None
  bar.close()


def test_heartbeat_keeps_a_log_alive_through_a_slow_update(lines):
  with progress.Progress(
    10, unit="batches", desc="bounds", interval=0.05, heartbeat=True, is_terminal=False
  ) as bar:
    time.sleep(0.4)  # One update that takes several intervals.
    bar.update(10)
  logged = lines()
  assert len(logged) >= 4, logged
  assert logged[0].startswith("bounds: 0/10 batches (0.0%)") and "ETA ?" in logged[0]
  assert logged[-1].startswith("bounds: 10/10 batches (100.0%)")
  count = len(logged)
  time.sleep(0.2)
  assert len(lines()) == count  # Closing stopped the heartbeat.


def test_phases_time_each_phase_and_log_start_and_end(lines):
  clock = FakeClock()
  phases = progress.Phases(heartbeat=False, clock=clock)
  with phases.phase("bounds", "10000 images"):
    clock.advance(41.2)
  with phases.phase("probes"):
    clock.advance(3.25)
  with pytest.raises(RuntimeError), phases.phase("fid"):
    clock.advance(2.0)
    raise RuntimeError("boom")
  with phases.phase("probes"):  # Runs again: the times add up.
    clock.advance(1.0)
  assert phases.seconds == pytest.approx({"bounds": 41.2, "probes": 4.25, "fid": 2.0})
  assert list(phases.seconds) == ["bounds", "probes", "fid"]
  assert phases.summary() == "bounds 41 s, probes 4.2 s, fid 2.0 s"
  assert lines() == [
    "bounds: started (10000 images)",
    "bounds: done in 41 s",
    "probes: started",
    "probes: done in 3.2 s",
    "fid: started",
    "fid: stopped by an error after 2.0 s",
    "probes: started",
    "probes: done in 1.0 s",
  ]


def test_phase_heartbeat(lines):
  phases = progress.Phases(interval=0.05)
  with phases.phase("fid"):
    time.sleep(0.3)
  logged = lines()
  assert logged[0] == "fid: started" and logged[-1].startswith("fid: done in")
  assert any(line.startswith("fid: running for") for line in logged[1:-1]), logged
  count = len(logged)
  time.sleep(0.2)
  assert len(lines()) == count


@pytest.mark.parametrize(
  "seconds, text",
  [(0.04, "0.0 s"), (4.25, "4.2 s"), (42.4, "42 s"), (185, "3 min 05 s"), (7620, "2 h 07 min")],
)
def test_format_duration(seconds, text):
  assert progress.format_duration(seconds) == text
  assert progress.format_duration(float("inf")) == "?"


def test_bad_interval():
  with pytest.raises(ValueError, match="interval must be > 0"):
    progress.Progress(10, interval=0)
  with pytest.raises(ValueError, match="interval must be > 0"):
    progress.Phases(interval=-1)
