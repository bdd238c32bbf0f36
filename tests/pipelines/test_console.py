"""What `garbage pipeline run` shows: a line per step; each step's full output in its log file.

The kfp.local lines are made with kfp.local's own formatting functions, so a change in how
kfp.local marks its tasks fails here.
"""

from __future__ import annotations

import io
from pathlib import Path

from kfp.local import logging_utils, status

from pipelines.console import HEARTBEAT_S, StepConsole

STEPS = {"fetch-data": "fetch data", "train-model": "train"}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def started(task: str) -> str:
    return f"12:00:00.000 - INFO - Executing task {logging_utils.format_task_name(task)}\n"


def finished(task: str, outcome: status.Status) -> str:
    name, state = logging_utils.format_task_name(task), logging_utils.format_status(outcome)
    return f"12:00:01.000 - INFO - Task {name} finished with status {state}\n"


def run(console: StepConsole, clock: Clock) -> None:
    console.write("12:00:00.000 - INFO - Running pipeline: 'garbage-classifier-train'\n")
    console.write(started("fetch-data"))
    console.write(
        "    [KFP Executor 2026-12-01 22:14:40,861 INFO]: Got executor_input:\n"
        "    {\n"
        '        "inputs": {"parameterValues": {"config_json": "{}"}}\n'
        "    }\n"
    )
    clock.now += 3.2
    console.write(finished("fetch-data", status.Status.SUCCESS))
    console.write(started("train-model"))
    clock.now += HEARTBEAT_S + 1
    console.write("    epoch 1/2:  50%|#####     | 1/2 [00:01<00:01]\r")
    console.write("    epoch 1/2: train_loss 1.20 val_macro_f1 0.61\n")
    console.write("    [KFP Executor 2026-12-01 22:14:55,417 INFO]: Wrote executor output file\n")
    clock.now += 10
    console.write(finished("train-model", status.Status.SUCCESS))
    console.close()


def test_each_step_gets_a_line_and_its_own_log(tmp_path: Path) -> None:
    clock, terminal = Clock(), Terminal(tty=False)
    run(StepConsole(tmp_path, STEPS, terminal, clock=clock), clock)
    shown = terminal.getvalue().splitlines()
    assert shown == [
        "[1/2] fetch data done in 3.2 s",
        "[2/2] train ... epoch 1/2:  50%|#####     | 1/2 [00:01<00:01]",  # the heartbeat
        "[2/2] train done in 41.0 s",
    ]
    fetch_log = (tmp_path / "fetch-data.log").read_text()
    assert "Got executor_input" in fetch_log and "\x1b[" not in fetch_log
    assert '"config_json"' in fetch_log
    assert "val_macro_f1 0.61" in (tmp_path / "train-model.log").read_text()
    assert "Running pipeline" in (tmp_path / "pipeline.log").read_text()


def test_a_terminal_shows_the_latest_line_of_the_running_step_in_place(tmp_path: Path) -> None:
    clock, terminal = Clock(), Terminal(tty=True)
    run(StepConsole(tmp_path, STEPS, terminal, clock=clock), clock)
    text = terminal.getvalue()
    assert "\r\x1b[2K[2/2] train epoch 1/2: train_loss 1.20 val_macro_f1 0.61" in text
    assert "KFP Executor" not in text and "config_json" not in text and "}" not in text
    finals = [part for part in text.split("\r\x1b[2K") if part.endswith("\n")]
    assert finals == ["[1/2] fetch data done in 3.2 s\n", "[2/2] train done in 41.0 s\n"]


def test_a_failed_step_names_its_log_and_what_it_died_of(tmp_path: Path) -> None:
    clock, terminal = Clock(), Terminal(tty=False)
    console = StepConsole(tmp_path, STEPS, terminal, clock=clock)
    for _ in range(2):  # kfp.local retries the step once
        console.write(started("fetch-data"))
        console.write("    Traceback (most recent call last):\n")
        console.write('      File "steps.py", line 38, in fetch_step\n')
        console.write(
            "    garbage.training.data.fetch.DataFetchError: checksum mismatch; "
            "set GARBAGE_DATA_SHA256=abc\n"
        )
        console.write("    \n")
        console.write(finished("fetch-data", status.Status.FAILURE))
    console.close()
    log = tmp_path / "fetch-data.log"
    assert terminal.getvalue().splitlines() == [
        f"[1/2] fetch data FAILED after 0.0 s; log: {log}",
        "[1/2] fetch data: retrying (attempt 2)",
        f"[1/2] fetch data FAILED after 0.0 s; log: {log}",
    ]
    assert console.failed == "fetch-data"
    assert console.label("fetch-data") == "[1/2] fetch data"
    assert console.error() == (
        "garbage.training.data.fetch.DataFetchError: checksum mismatch; set GARBAGE_DATA_SHA256=abc"
    )
    assert log.read_text().count("Traceback") == 2  # both attempts, in full


def test_a_step_skipped_by_its_condition_says_so(tmp_path: Path) -> None:
    terminal = Terminal(tty=False)
    console = StepConsole(tmp_path, STEPS, terminal)
    console.write(
        "12:00:00.000 - INFO - Skipping conditional task deploy-model "
        "(condition evaluated to False)\n"
    )
    console.write(
        "12:00:00.000 - INFO - Skipping task register-model: upstream task(s) ['train-model'] "
        "failed.\n"
    )
    console.close()
    assert terminal.getvalue().splitlines() == [
        "deploy model skipped: condition evaluated to False",
        "register model skipped: upstream task(s) ['train-model'] failed",
    ]
