"""What a local pipeline run shows a person: a line per step, its progress and its outcome.

``kfp.local`` prints everything a step does (the executor's input, with the whole config, its
outputs, every log line) to standard output. :class:`StepConsole` takes that stream in place of
standard output, writes each step's part to the step's own log file, and shows on the terminal
only the step's name, its latest progress line and how it ended. It tells the steps apart by the
lines ``kfp.local`` logs around each task (``Executing task 'NAME'``, ``Task 'NAME' finished with
status STATUS``).
"""

from __future__ import annotations

import io
import re
import shutil
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TextIO

ANSI = re.compile(r"\x1b\[[0-9;]*m")
TASK_STARTED = re.compile(r"Executing task '(?P<task>[^']+)'")
TASK_FINISHED = re.compile(r"Task '(?P<task>[^']+)' finished with status (?P<status>[A-Z]+)")
TASK_SKIPPED = re.compile(r"Skipping (?:conditional )?task (?P<task>[^\s:]+):? (?P<why>.*)")
#: Lines of the KFP executor itself (its input, with the whole config, and where it wrote its
#: output): in the step's log, never shown as the step's progress.
EXECUTOR_LINE = re.compile(r"^\s*\[KFP Executor ")
EXECUTOR_INPUT = "Got executor_input:"
#: How often a terminal that is not a TTY (a CI log) gets the running step's latest line.
HEARTBEAT_S = 30.0
TAIL_LINES = 20
#: The last line of a Python traceback: ``package.module.SomeError: what went wrong``.
EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Exit|Interrupt|Warning)\b")


class StepConsole(io.TextIOBase):
    """A text stream that sorts a ``kfp.local`` run's output into one log file per step.

    Args:
        log_dir: Where ``<task>.log`` files (and ``pipeline.log`` for the rest) go.
        steps: Task name to display name, in pipeline order (for ``[3/8] split data``).
        out: The terminal.
        clock: Monotonic seconds (tests pass a fake).
    """

    def __init__(
        self,
        log_dir: Path,
        steps: Mapping[str, str],
        out: TextIO,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log_dir = log_dir
        self.steps = dict(steps)
        self.out = out
        self.live = out.isatty()
        self._clock = clock
        log_dir.mkdir(parents=True, exist_ok=True)
        self._pipeline_log = (log_dir / "pipeline.log").open("a", encoding="utf-8")
        self._file = self._pipeline_log
        self._task: str | None = None
        self._started = 0.0
        self._shown = 0.0
        self._partial = ""
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._executor_input: str | None = None  # the closing line of the JSON being skipped
        self._attempts: dict[str, int] = {}
        self.failed: str | None = None

    def writable(self) -> bool:
        """A write-only stream."""
        return True

    def write(self, text: str) -> int:
        """Take output; whole lines are sorted, a partial one waits for its end."""
        self._partial += text
        *lines, self._partial = re.split(r"\r\n|\n|\r", self._partial)
        for line in lines:
            self._line(line)
        return len(text)

    def flush(self) -> None:
        """Flush the open log file."""
        if not self.closed:
            self._file.flush()

    def close(self) -> None:
        """Write what is left and close the log files."""
        if self.closed:
            return
        if self._partial:
            self._line(self._partial)
            self._partial = ""
        self._end_task(None)
        super().close()  # flushes
        self._pipeline_log.close()

    def log_of(self, task: str) -> Path:
        """The log file of ``task``."""
        return self.log_dir / f"{task}.log"

    def error(self) -> str:
        """What the failed step died of: its last exception line, else its last line."""
        for line in reversed(self._tail):
            if EXCEPTION_LINE.match(line):
                return line
        return self._tail[-1] if self._tail else "(it wrote nothing)"

    def label(self, task: str) -> str:
        """``[3/8] split data`` for a step of the pipeline, the task's words otherwise."""
        names = list(self.steps)
        display = self.steps.get(task, task.replace("-", " "))
        if task in names:
            return f"[{names.index(task) + 1}/{len(names)}] {display}"
        return display

    # -- sorting -----------------------------------------------------------------------------

    def _line(self, raw: str) -> None:
        line = ANSI.sub("", raw)
        started = TASK_STARTED.search(line)
        if started:
            self._begin_task(started["task"])
        self._file.write(line + "\n")
        finished = TASK_FINISHED.search(line)
        if finished and finished["task"] == self._task:
            self._end_task(finished["status"])
            return
        skipped = TASK_SKIPPED.search(line)
        if skipped:
            self._say(f"{self.label(skipped['task'])} skipped: {skipped['why'].strip('(). ')}")
            return
        if self._task is not None and not started and self._is_progress(line):
            self._progress(line.strip())

    def _is_progress(self, line: str) -> bool:
        """Whether ``line`` is the step's own output (not blank, not the executor's)."""
        if self._executor_input is not None:
            if line.rstrip() == self._executor_input:
                self._executor_input = None
            return False
        if EXECUTOR_INPUT in line:
            # The JSON follows, indented like the executor's line; it ends with its brace.
            self._executor_input = line[: len(line) - len(line.lstrip())] + "}"
            return False
        return bool(line.strip()) and not EXECUTOR_LINE.match(line)

    def _begin_task(self, task: str) -> None:
        self._end_task(None)
        self._attempts[task] = self._attempts.get(task, 0) + 1
        if self._attempts[task] > 1:
            self._say(f"{self.label(task)}: retrying (attempt {self._attempts[task]})")
        self._task = task
        self._started = self._shown = self._clock()
        self._tail.clear()
        self._executor_input = None
        self._file = self.log_of(task).open("a", encoding="utf-8")
        if self.live:
            self._status(f"{self.label(task)} ...")

    def _end_task(self, status: str | None) -> None:
        if self._task is None:
            return
        task, seconds = self._task, self._clock() - self._started
        self._task = None
        self._file.close()
        self._file = self._pipeline_log
        if status == "SUCCESS":
            self._say(f"{self.label(task)} done in {_duration(seconds)}")
        else:
            self.failed = task
            outcome = "FAILED" if status else "stopped"
            self._say(
                f"{self.label(task)} {outcome} after {_duration(seconds)}; log: {self.log_of(task)}"
            )

    def _progress(self, line: str) -> None:
        self._tail.append(line)
        now = self._clock()
        if self.live:
            self._status(f"{self.label(self._task or '')} {line}")
        elif now - self._shown >= HEARTBEAT_S:
            self._shown = now
            self._say(f"{self.label(self._task or '')} ... {line}")

    # -- terminal ----------------------------------------------------------------------------

    def _status(self, text: str) -> None:
        width = shutil.get_terminal_size((100, 20)).columns - 1
        self.out.write("\r\x1b[2K" + text[:width])
        self.out.flush()

    def _say(self, text: str) -> None:
        if self.live:
            self.out.write("\r\x1b[2K")
        self.out.write(text + "\n")
        self.out.flush()


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"
