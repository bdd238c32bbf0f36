"""The payload logger's on-disk spill (``monitoring/spill.py``): bounded, fsync'd, adopted after a
crash, never shared between processes, readable by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from monitoring.spill import EventSpill, PayloadEvent, SpillError


def _event(seq: int, size: int = 10) -> PayloadEvent:
    return PayloadEvent(seq, {"Ce-Id": f"e{seq}", "Ce-Type": "x.request"}, b"z" * size)


def test_the_spill_is_adopted_after_a_crash_and_never_shared(tmp_path: Path) -> None:
    code = (
        "import os, sys; from monitoring.spill import EventSpill, PayloadEvent; "
        "s = EventSpill(sys.argv[1]); "
        "[s.put(PayloadEvent(i, {'Ce-Id': f'e{i}'}, b'b')) for i in (3, 1, 2)]; "
        "open(s.folder / '.half-written.tmp', 'wb').write(b'partial'); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=60)
    adopter = EventSpill(tmp_path)
    other = EventSpill(tmp_path)  # a second process (or logger) gets a folder of its own
    try:
        assert adopter.folder != other.folder and other.depth == 0
        assert not list(adopter.folder.glob("*.tmp"))
        taken = [adopter.take() for _ in range(3)]
        assert [e.headers["Ce-Id"] for _, e in taken] == ["e1", "e2", "e3"]
        assert adopter.take() is None
        name, _ = taken[0]
        adopter.release(name)
        assert adopter.take()[0] == name
    finally:
        adopter.close()
        other.close()
    merged = EventSpill(tmp_path)  # both folders are free now: one adopts the other
    try:
        assert merged.depth == 3
        assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 1
    finally:
        merged.close()


def test_the_spill_refuses_what_does_not_fit_and_drops_an_unreadable_file(
    tmp_path: Path,
) -> None:
    spill = EventSpill(tmp_path, max_bytes=400)  # two events of 100 bytes and their headers
    try:
        assert spill.put(_event(1, 100)) and spill.put(_event(2, 100))
        assert not spill.put(_event(3, 100))
        assert spill.depth == 2 and spill.bytes <= 400
        assert spill.put(_event(1, 100))  # the same event again replaces its file
        assert spill.depth == 2
        broken = spill.folder / EventSpill.name_of(_event(1))
        broken.write_bytes(b"\xff not a header")
        name, event = spill.take()
        assert event is None and not broken.exists() and spill.depth == 1
        name, event = spill.take()
        spill.remove(name)
        assert (spill.depth, spill.bytes) == (0, 0)
    finally:
        spill.close()


def test_an_unusable_spill_folder_says_what_to_do(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SpillError, match="--logger-spill-dir"):
        EventSpill(blocker / "spill")


def test_json_header_of_a_spilled_event_is_readable_by_hand(tmp_path: Path) -> None:
    spill = EventSpill(tmp_path)
    try:
        spill.put(PayloadEvent(7, {"Ce-Id": "by-hand"}, b"payload"))
        [path] = spill.folder.glob("*.event")
        header, body = path.read_bytes().split(b"\n", 1)
        assert json.loads(header) == {"seq": 7, "headers": {"Ce-Id": "by-hand"}}
        assert body == b"payload" and oct(os.stat(path).st_mode)[-3:] == "600"
    finally:
        spill.close()
