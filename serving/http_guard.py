"""uvicorn's HTTP protocol with read limits: a slow or oversized request head or body is cut off.

uvicorn (0.54, under KServe 0.20) has no timeout for reading a request and, with httptools, no
limit on the size of its head: a client that sends its headers a byte at a time, or stops in the
middle of its body, holds its connection and the bytes buffered so far for as long as it likes
(``--timeout-keep-alive`` only applies between requests). :class:`GuardedHttpToolsProtocol`,
uvicorn's httptools protocol (KServe's choice when httptools is installed, as in the serving
image) plus three rules, closes such a connection:

* the request line and headers must arrive within ``header_timeout_s`` of the connection
  opening or of the request's first byte (408);
* the body must arrive within ``body_timeout_s`` of the headers (408);
* the request line and headers may hold at most ``max_head_bytes`` (431).

When no response has started, the client gets the status with a JSON ``{"error": ...}`` body
before the connection closes; ``garbage_refused_connections_total`` counts each by reason. The
limits travel on uvicorn's ``Config`` (attribute :data:`LIMITS_ATTRIBUTE`), which KServe pickles
into its worker processes with ``--workers > 1``.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from serving.metrics import serving_metrics

LIMITS_ATTRIBUTE = "garbage_read_limits"
MAX_HEAD_BYTES = 64 * 1024
"""Request line and headers together: browsers and HTTP clients stay under 16 KiB."""


@dataclass(frozen=True)
class ReadLimits:
    """How long and how much a client may take to send one request."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    max_head_bytes: int = MAX_HEAD_BYTES


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the head and body read limits of :class:`ReadLimits`."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.read_limits: ReadLimits = getattr(config, LIMITS_ATTRIBUTE, None) or ReadLimits()
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._reading_head = False
        self._head_bytes = 0
        self._head_tail = b""  # the last bytes seen, for an end of head split across reads

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """A new connection: its first request head is timed from now."""
        super().connection_made(transport)
        self._start_head()

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection is gone: no timer may fire on it."""
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Count the bytes of the request head (431 beyond the limit), then parse."""
        if self._reading_head:
            seen = self._head_tail + data
            end = seen.find(b"\r\n\r\n")
            self._head_bytes += len(data) if end < 0 else max(0, end + 4 - len(self._head_tail))
            self._head_tail = seen[-3:]
            if self._head_bytes > self.read_limits.max_head_bytes:
                self._refuse(
                    431,
                    "head_too_large",
                    f"the request line and headers are over {self.read_limits.max_head_bytes} "
                    "bytes; send fewer or shorter headers",
                    head=True,
                )
                return
        super().data_received(data)

    # -- parser callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        """A request's first byte: its head is timed from now (unless already timed)."""
        super().on_message_begin()
        if not self._reading_head:
            self._start_head()

    def on_headers_complete(self) -> None:
        """The head is in: stop its timer, start the body's."""
        self._reading_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()
        self._body_timer = self.loop.call_later(
            self.read_limits.body_timeout_s, self._body_timed_out
        )

    def on_message_complete(self) -> None:
        """The body is in: stop its timer."""
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        """Not HTTP any more: no read limits."""
        self._cancel_timers()
        super().handle_websocket_upgrade()

    # -- the rules ---------------------------------------------------------------------------

    def _start_head(self) -> None:
        self._reading_head = True
        self._head_bytes = 0
        self._head_tail = b""
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(
                self.read_limits.header_timeout_s, self._head_timed_out
            )

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._reading_head:
            self._refuse(
                408,
                "head_timeout",
                f"the request line and headers did not arrive within "
                f"{self.read_limits.header_timeout_s:g} s; send the whole request at once",
                head=True,
            )

    def _body_timed_out(self) -> None:
        self._body_timer = None
        self._refuse(
            408,
            "body_timeout",
            f"the request body did not arrive within {self.read_limits.body_timeout_s:g} s of "
            "its headers; send the whole request at once",
            head=False,
        )

    def _refuse(self, status: int, reason: str, message: str, *, head: bool) -> None:
        """Answer ``status`` if no response has started on the connection, then close it.

        Args:
            status: 408 or 431.
            reason: The ``reason`` label of ``garbage_refused_connections_total``.
            message: The error, for the client.
            head: The request's head is what is missing (its cycle does not exist yet).
        """
        if self.transport is None or self.transport.is_closing():
            return
        self._cancel_timers()
        self._reading_head = False
        serving_metrics().refused_connections.labels(reason).inc()
        cycle = self.cycle
        if head:
            can_answer = cycle is None or cycle.response_complete
        else:
            can_answer = cycle is not None and not cycle.response_started
        if can_answer:
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True  # the application's late answer goes nowhere
            body = json.dumps({"error": message}).encode()
            headers = [STATUS_LINE[status]]
            for name, value in self.server_state.default_headers:
                headers.extend([name, b": ", value, b"\r\n"])
            headers.extend(
                [
                    b"content-type: application/json\r\n",
                    b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                    b"connection: close\r\n\r\n",
                ]
            )
            self.transport.write(b"".join(headers) + body)
        self.transport.close()
