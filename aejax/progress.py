"""Progress of long loops and phases: a tqdm bar in a terminal, timed plain log lines in a file."""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

import tqdm

__all__ = [
  "DEFAULT_INTERVAL",
  "Phases",
  "Progress",
  "format_duration",
  "stream_is_terminal",
]

# Seconds between two progress lines in a log file: often enough that a job never looks hung,
# rarely enough that a long run's log stays readable.
DEFAULT_INTERVAL = 10.0

_log = logging.getLogger(__name__)


def stream_is_terminal(stream: IO[str] | None = None) -> bool:
  """Whether `stream` (default: sys.stderr, where tqdm and logging write) is a terminal."""
  stream = sys.stderr if stream is None else stream
  try:
    return bool(stream.isatty())
  except (AttributeError, ValueError):  # No isatty(), or the stream is closed.
    return False


def format_duration(seconds: float) -> str:
  """A duration for a log line: '4.2 s', '42 s', '3 min 05 s', '2 h 07 min'; '?' if unknown."""
  if not math.isfinite(seconds) or seconds < 0:
    return "?"
  if seconds < 10:
    return f"{seconds:.1f} s"
  whole = round(seconds)
  if whole < 60:
    return f"{whole} s"
  if whole < 3600:
    return f"{whole // 60} min {whole % 60:02d} s"
  return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def _format_rate(rate: float) -> str:
  if rate >= 100:
    return f"{rate:.0f}"
  if rate >= 10:
    return f"{rate:.1f}"
  return f"{rate:.2f}"


def _format_value(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value)


def _beat_period(interval: float) -> float:
  """Seconds between two looks of a heartbeat at the clock."""
  # A few looks per interval, so a quiet stretch gets its line soon after `interval` seconds
  # rather than up to two intervals later; at most 20 a second, whatever the interval.
  return min(max(interval / 4, 0.05), 1.0)


class _Heartbeat:
  """Calls `beat()` from a daemon thread about every `period` seconds until stopped."""

  def __init__(self, period: float, beat: Callable[[], None]):
    self._stop = threading.Event()
    self._beat = beat
    self._period = period
    self._thread = threading.Thread(target=self._run, name="aejax-progress", daemon=True)
    self._thread.start()

  def _run(self) -> None:
    while not self._stop.wait(self._period):
      self._beat()

  def stop(self) -> None:
    self._stop.set()
    if self._thread is not threading.current_thread():
      self._thread.join()


class Progress:
  """Reports how far a loop over `total` units (steps, images) has got.

  When the output stream (stderr) is a terminal: a tqdm bar. Otherwise (a log file, a pipe):
  an INFO log line
    `desc: done/total unit (pct%), rate unit/s, ETA ..., elapsed ...[, key=value ...]`
  at most every `interval` seconds and once at close(), and never a carriage return. The rate
  and ETA are over the units done since the first line, so a slow start (compilation) does
  not skew them for the rest of the run, and one uneven batch does not make the ETA jump.
  With `heartbeat`, a background thread also writes the line when `interval` seconds pass
  without one, so a log stays alive through a single slow update (a first step that
  compiles, a large batch).

  Use as a context manager, or call close(): it writes the final line and stops the heartbeat.

  Args:
    total: units the loop will do in all (counted from 0, not from `initial`); None if unknown
      (then no percent and no ETA).
    unit: what one unit is, e.g. "steps" or "images".
    desc: what the loop does; starts each line.
    enabled: False reports nothing at all.
    interval: seconds between lines in a file; default DEFAULT_INTERVAL.
    heartbeat: also write a line after `interval` quiet seconds (files only).
    initial: units already done before this loop (a resumed run): counted in done and the
      percent, not in the rate.
    is_terminal: whether to draw a bar; None asks the stream.
    stream: where the bar goes (default sys.stderr); log lines go to `logger`.
    logger: default this module's logger.
    clock: seconds, monotonic; for tests.
  """

  def __init__(
    self,
    total: int | None,
    *,
    unit: str = "it",
    desc: str = "",
    enabled: bool = True,
    interval: float | None = None,
    heartbeat: bool = False,
    initial: int = 0,
    is_terminal: bool | None = None,
    stream: IO[str] | None = None,
    logger: logging.Logger | None = None,
    clock: Callable[[], float] = time.monotonic,
  ):
    interval = DEFAULT_INTERVAL if interval is None else interval
    if not interval > 0:
      raise ValueError(f"Progress: interval must be > 0 seconds, got {interval}")
    self.total = total
    self.unit = unit
    self.desc = desc
    self.done = initial
    self.postfix: dict[str, Any] = {}
    self._interval = interval
    self._logger = logger or _log
    self._clock = clock
    self._lock = threading.Lock()
    self._closed = not enabled
    self._started = clock()
    self._initial = initial
    # The previous line: when, and how much was done then (when the next line is due).
    self._line_time = self._started
    self._line_done = initial
    # The first line: the rate counts from there, so a slow start (compilation) does not skew
    # it, and it averages over all batches since, so one slow or fast batch does not either.
    self._origin: tuple[float, int] | None = None
    self._bar: tqdm.tqdm | None = None
    self._heartbeat: _Heartbeat | None = None
    if not enabled:
      return
    stream = sys.stderr if stream is None else stream
    if stream_is_terminal(stream) if is_terminal is None else is_terminal:
      self._bar = tqdm.tqdm(
        total=total, initial=initial, unit=f" {unit}", desc=desc, file=stream, dynamic_ncols=True
      )
    elif heartbeat:
      self._heartbeat = _Heartbeat(_beat_period(interval), self._beat)

  @property
  def elapsed(self) -> float:
    """Seconds since the loop started."""
    return self._clock() - self._started

  def update(self, n: int = 1, **postfix: Any) -> None:
    """Counts n more units done; postfix values (e.g. loss=0.1) are shown until replaced."""
    with self._lock:
      if self._closed:
        return
      self.done += n
      self.postfix.update(postfix)
      if self._bar is not None:
        if postfix:
          self._bar.set_postfix({k: _format_value(v) for k, v in postfix.items()}, refresh=False)
        self._bar.update(n)
      elif self._clock() - self._line_time >= self._interval:
        self._write_line()

  def close(self) -> None:
    """Writes the final line (files) or closes the bar (terminals). Safe to call twice."""
    with self._lock:
      if self._closed:
        return
      self._closed = True
      heartbeat, self._heartbeat = self._heartbeat, None
      if self._bar is not None:
        self._bar.close()
      else:
        self._write_line(final=True)
    # Outside the lock: the heartbeat thread may be waiting for it.
    if heartbeat is not None:
      heartbeat.stop()

  def __enter__(self) -> Progress:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def _beat(self) -> None:
    with self._lock:
      if not self._closed and self._clock() - self._line_time >= self._interval:
        self._write_line()

  def line(self, final: bool = False) -> str:
    """The status line as it would be logged now."""
    now = self._clock()
    elapsed = now - self._started
    parts = [f"{self.done}/{self.total} {self.unit}" if self.total else f"{self.done} {self.unit}"]
    if self.total:
      parts[0] += f" ({100.0 * self.done / self.total:.1f}%)"
    if final:
      rate = (self.done - self._initial) / elapsed if elapsed > 0 else math.nan
    else:
      since_time, since_done = self._origin or (self._line_time, self._line_done)
      window = now - since_time
      rate = (self.done - since_done) / window if window > 0 else math.nan
      if not rate > 0:
        # Nothing done since the last line (a slow update): the average so far instead.
        rate = (self.done - self._initial) / elapsed if elapsed > 0 else math.nan
    if math.isfinite(rate):
      parts.append(f"{_format_rate(rate)} {self.unit}/s")
    if not final and self.total:
      eta = (self.total - self.done) / rate if rate > 0 else math.inf
      parts.append(f"ETA {format_duration(eta)}")
    parts.append(f"{'done in' if final else 'elapsed'} {format_duration(elapsed)}")
    parts += [f"{key}={_format_value(value)}" for key, value in self.postfix.items()]
    prefix = f"{self.desc}: " if self.desc else ""
    return prefix + ", ".join(parts)

  def _write_line(self, final: bool = False) -> None:
    # One logging call per line, no control characters: fit for files and pipes.
    self._logger.info("%s", self.line(final))
    self._line_time = self._clock()
    self._line_done = self.done
    if self._origin is None:
      self._origin = (self._line_time, self.done)


class Phases:
  """Times the named phases of a job; logs a start and an end line (with the duration) for each.

  `seconds` maps each phase name to the seconds spent in it (summed if it runs again), in the
  order the phases first ran: what a job's summary reports. With `heartbeat`, a phase that runs
  for longer than `interval` also logs `name: running for ...` every `interval` seconds.
  """

  def __init__(
    self,
    *,
    interval: float | None = None,
    heartbeat: bool = True,
    logger: logging.Logger | None = None,
    clock: Callable[[], float] = time.perf_counter,
  ):
    interval = DEFAULT_INTERVAL if interval is None else interval
    if not interval > 0:
      raise ValueError(f"Phases: interval must be > 0 seconds, got {interval}")
    self.seconds: dict[str, float] = {}
    self._interval = interval
    self._heartbeat = heartbeat
    self._logger = logger or _log
    self._clock = clock

  @contextlib.contextmanager
  def phase(self, name: str, detail: str = "", *, heartbeat: bool | None = None) -> Iterator[None]:
    """Times the `with` block as phase `name`; `detail` goes on its start line.

    heartbeat=False for a phase that reports its own progress (e.g. through a Progress).
    """
    self._logger.info("%s: started%s", name, f" ({detail})" if detail else "")
    started = self._clock()
    last = [started]

    def beat() -> None:
      now = self._clock()
      if now - last[0] >= self._interval:
        self._logger.info("%s: running for %s", name, format_duration(now - started))
        last[0] = now

    beating = self._heartbeat if heartbeat is None else heartbeat
    pulse = _Heartbeat(_beat_period(self._interval), beat) if beating else None
    ok = False
    try:
      yield
      ok = True
    finally:
      if pulse is not None:
        pulse.stop()
      elapsed = self._clock() - started
      self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
      if ok:
        self._logger.info("%s: done in %s", name, format_duration(elapsed))
      else:
        self._logger.info("%s: stopped by an error after %s", name, format_duration(elapsed))

  def summary(self) -> str:
    """'bounds 41 s, probes 3.2 s, ...': the phases in the order they ran."""
    return ", ".join(f"{name} {format_duration(s)}" for name, s in self.seconds.items())
