"""The payload logger's on-disk spill: events kept, fsync'd, while the collector is away.

One file per event, in a folder bounded in bytes, so a delivered event is deleted on its own (no
compaction, no offset to keep durable). Each process locks a subfolder of its own and adopts the
folders of dead processes, so events survive a restart and are sent oldest first.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_MAX_SPILL_BYTES = 2**30


class SpillError(RuntimeError):
    """The spill folder cannot be created or locked; the message names it and what to do."""


@dataclass(frozen=True)
class PayloadEvent:
    """One CloudEvent as it will be posted, fixed when it is logged.

    Attributes:
        seq: Position in the order events were logged (nanoseconds, unique in this process);
            the spill sends the oldest first.
        headers: The binary-mode CloudEvent headers (``Ce-Id``, ``Ce-Time``, ...).
        body: The payload.
    """

    seq: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def size(self) -> int:
        """Bytes it holds: body and headers."""
        return len(self.body) + sum(len(k) + len(v) for k, v in self.headers.items())

    @property
    def label(self) -> str:
        """``<ce-id> (<kind>)`` for log lines."""
        lower = {k.lower(): v for k, v in self.headers.items()}
        kind = lower.get("ce-type", "").rsplit(".", 1)[-1]
        return f"{lower.get('ce-id', '?')[:64]} ({kind})"


class EventSpill:
    """Events waiting on disk for the sink: a folder bounded in bytes, one fsync'd file per event.

    One file per event, not an append-only segment: events leave the spill one by one and not
    in the order the senders finish them, so a delivered event's file is simply deleted, with no
    compaction and no read offset to keep durable; a crash while writing leaves at most a
    temporary file, removed at the next start. The cost, a create, a rename and two fsyncs per
    event, is paid only while the collector is away. File names carry the event's ``seq``, so
    the oldest is sent first, across restarts too.

    Each process locks a subfolder of ``root`` (``flock``) for as long as it runs. Opening one
    adopts the events of every subfolder whose process is gone (a restart, a crash, another
    worker count), so nothing waits forever and two processes never send the same file.
    """

    SUFFIX = ".event"
    LOCK = ".lock"

    def __init__(self, root: Path | str, max_bytes: int = DEFAULT_MAX_SPILL_BYTES) -> None:
        """Open (and lock) a spill folder under ``root``, adopting what earlier processes left.

        Raises:
            SpillError: ``root`` cannot be created or written.
        """
        if max_bytes <= 0:
            raise ValueError("a spill needs max_bytes > 0")
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._names: list[str] = []  # pending, oldest first; claimed ones are not in it
        self._sizes: dict[str, int] = {}  # every file of the folder, claimed or not
        self._bytes = 0
        self._lock_fd: int | None = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.folder = self._claim_folder()
            self._adopt_orphans()
            self._scan()
        except OSError as e:
            self.close()
            raise SpillError(
                f"cannot use {self.root} as the payload logger's spill folder: {e}; give a "
                "writable folder (--logger-spill-dir), or --logger-max-spill-bytes 0 for none"
            ) from e

    # folder ownership ---------------------------------------------------------------------------

    def _try_lock(self, folder: Path) -> int | None:
        fd = os.open(folder / self.LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def _subfolders(self) -> list[Path]:
        return sorted(p for p in self.root.iterdir() if p.is_dir() and not p.is_symlink())

    def _claim_folder(self) -> Path:
        for folder in self._subfolders():
            fd = self._try_lock(folder)
            if fd is not None:
                self._lock_fd = fd
                return folder
        folder = self.root / f"p{os.getpid()}-{time.time_ns()}"
        folder.mkdir()
        fd = self._try_lock(folder)
        assert fd is not None, "a folder created just now is locked by nobody"
        self._lock_fd = fd
        return folder

    def _adopt_orphans(self) -> None:
        for folder in self._subfolders():
            if folder == self.folder:
                continue
            fd = self._try_lock(folder)
            if fd is None:
                continue  # another live process owns it
            try:
                for path in folder.glob(f"*{self.SUFFIX}"):
                    os.replace(path, self.folder / path.name)
                for leftover in folder.iterdir():
                    leftover.unlink()
                folder.rmdir()
            finally:
                os.close(fd)
        _fsync_dir(self.folder)

    def _scan(self) -> None:
        for path in self.folder.iterdir():
            if path.name.endswith(".tmp"):
                path.unlink()  # a write that never completed: its event was never acknowledged
            elif path.name.endswith(self.SUFFIX):
                size = path.stat().st_size
                self._sizes[path.name] = size
                self._bytes += size
                self._names.append(path.name)
        self._names.sort()

    def close(self) -> None:
        """Release the folder (the files stay for the next process)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # contents -------------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Events waiting in the spill, sent or being sent included."""
        return len(self._sizes)

    @property
    def bytes(self) -> int:
        """Bytes of the spilled events."""
        return self._bytes

    @property
    def pending(self) -> int:
        """Events no sender holds right now."""
        return len(self._names)

    def has_room(self, nbytes: int) -> bool:
        """Whether an event of about ``nbytes`` would fit."""
        return self._bytes + nbytes <= self.max_bytes

    @staticmethod
    def name_of(event: PayloadEvent) -> str:
        """The file name of ``event``: ordered by ``seq``, the same for the same event."""
        return f"{event.seq:020d}-{os.getpid()}{EventSpill.SUFFIX}"

    def put(self, event: PayloadEvent, name: str | None = None) -> bool:
        """Write ``event`` durably (file fsync'd, renamed into place, folder fsync'd).

        Writing an event that is already there replaces its file. Any thread may call it.

        Returns:
            False when it does not fit in ``max_bytes`` (nothing is written then).

        Raises:
            OSError: The disk refused the write (full, read-only); nothing is kept then.
        """
        name = name or self.name_of(event)
        header = json.dumps({"seq": event.seq, "headers": dict(event.headers)}).encode()
        data = header + b"\n" + event.body
        with self._lock:
            known = name in self._sizes
            if not known and not self.has_room(len(data)):
                return False
            self._sizes[name] = len(data)  # reserved while the file is written
            self._bytes += 0 if known else len(data)
        temporary = self.folder / f".{name}.{threading.get_ident()}.tmp"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, self.folder / name)
            _fsync_dir(self.folder)
        except OSError:
            with contextlib.suppress(OSError):
                temporary.unlink()
            if not known:
                with self._lock:
                    self._bytes -= self._sizes.pop(name, 0)
            raise
        with self._lock:
            if name not in self._names:
                bisect.insort(self._names, name)
        return True

    def take(self) -> tuple[str, PayloadEvent | None] | None:
        """Claim the oldest pending event for sending: ``(name, event)``; None when none is.

        An unreadable file (the disk damaged it) is deleted and returned as ``(name, None)``.
        Hand the name back with :meth:`release` (not sent) or :meth:`remove` (done).
        """
        with self._lock:
            if not self._names:
                return None
            name = self._names.pop(0)
        path = self.folder / name
        try:
            data = path.read_bytes()
            header, _, body = data.partition(b"\n")
            meta = json.loads(header)
            event = PayloadEvent(int(meta["seq"]), dict(meta["headers"]), body)
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.error("payload logger: spilled event %s is unreadable (%s); deleting it", path, e)
            self.remove(name)
            return name, None
        return name, event

    def release(self, name: str) -> None:
        """Put a claimed event back, unsent, in its place in the order."""
        with self._lock:
            if name in self._sizes and name not in self._names:
                bisect.insort(self._names, name)

    def remove(self, name: str) -> None:
        """Delete a claimed event (delivered or rejected)."""
        with self._lock:
            self._bytes -= self._sizes.pop(name, 0)
            if name in self._names:
                self._names.remove(name)
        # Not fsync'd: if the deletion is lost in a crash the event is sent again, a no-op.
        with contextlib.suppress(FileNotFoundError):
            (self.folder / name).unlink()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- the logger -------------------------------------------------------------------------------
