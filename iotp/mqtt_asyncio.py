"""Run a paho-mqtt client on the asyncio event loop instead of in paho's own network thread.

paho's documented external-loop integration (``socket()``, ``loop_read``/``loop_write``/``loop_misc``
driven by ``add_reader``/``add_writer``). One thread does everything, so a high-rate consumer pays no GIL
hand-off between paho's thread and the event loop for every small ``recv``, and backpressure is simply
:meth:`pause_reading`: the socket is not read, TCP fills, and the broker holds the backlog. With a
:class:`iotp.paho_buffered.BufferedClient` the packets it already read into its buffer are handled too:
after each read while reading is not paused, and on :meth:`resume_reading`.

paho does not reconnect by itself in this mode; :class:`AsyncioMqtt` reconnects with exponential backoff
when the connection drops (unless it was closed on purpose).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt

from iotp.retry import Backoff, retry_forever

if TYPE_CHECKING:
    from paho.mqtt.client import SocketLike

log = logging.getLogger("iotp.mqtt")

#: Buffered packets handled in one reader callback (a 256 KiB read holds ~2,000 small PUBLISHes, ~0.1 s of a
#: gateway's work; this keeps each turn at a few ms).
PACKETS_PER_CALLBACK = 100


class _Closing(Exception):
    """Raised inside a connect attempt once :meth:`AsyncioMqtt.close` was called: stop retrying."""


class AsyncioMqtt:
    def __init__(
        self, client: mqtt.Client, connect: Callable[[], None], *, min_backoff: float = 0.5, max_backoff: float = 30.0
    ) -> None:
        """``connect`` performs the (blocking, short) ``client.connect(...)`` call with its properties."""
        self.client = client
        self._connect = connect
        self.loop = asyncio.get_running_loop()
        self.min_backoff, self.max_backoff = min_backoff, max_backoff
        self._backoff = Backoff(min_backoff, max_backoff)
        self._sock: SocketLike | None = None
        self._paused = False
        self._closing = False
        self._misc: asyncio.Task | None = None
        self._reconnect: asyncio.Task | None = None
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write

    # ------------------------------------------------------------- socket callbacks
    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: SocketLike) -> None:
        self._sock = sock
        if isinstance(sock, socket.socket):  # TCP or TLS (not paho's websocket wrapper)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        if not self._paused:
            self.loop.add_reader(sock, self._readable)
        if self._misc is None or self._misc.done():
            self._misc = self.loop.create_task(self._misc_loop())

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: SocketLike) -> None:
        with contextlib.suppress(Exception):
            self.loop.remove_reader(sock)
            self.loop.remove_writer(sock)
        self._sock = None
        if not self._closing and (self._reconnect is None or self._reconnect.done()):
            self._reconnect = self.loop.create_task(self._reconnect_loop())

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: SocketLike) -> None:
        self.loop.add_writer(sock, client.loop_write)

    def _on_unregister_write(self, client: mqtt.Client, userdata: Any, sock: SocketLike) -> None:
        self.loop.remove_writer(sock)

    def _readable(self) -> None:
        client = self.client
        client.loop_read()
        # A BufferedClient may hold more packets than the one just read: the socket will not turn readable
        # for them, so read them now (unless a callback paused reading meanwhile), at most
        # PACKETS_PER_CALLBACK before the loop's other callbacks (Kafka acks, timers) get their turn.
        for _ in range(PACKETS_PER_CALLBACK):
            if self._paused or self._sock is None or not getattr(client, "buffered", False):
                return
            client.loop_read()
        self.loop.call_soon(self._readable_if_open)

    async def _misc_loop(self) -> None:
        while self._sock is not None:
            self.client.loop_misc()  # keepalive pings, retries
            await asyncio.sleep(1.0)

    # ------------------------------------------------------------------- control
    async def connect(self) -> None:
        """Connect, retrying with backoff until the broker answers (or :meth:`close` is called)."""

        async def attempt() -> None:
            if self._closing:
                raise _Closing
            self._connect()

        with contextlib.suppress(_Closing):
            await retry_forever(attempt, what="MQTT not reachable", retry_on=OSError, backoff=self._backoff, log=log)

    async def _reconnect_loop(self) -> None:
        """Reconnect after a lost connection: wait ``min_backoff`` first, then try with backoff."""

        async def attempt() -> None:
            if self._closing or self._sock is not None:
                raise _Closing
            self.client.reconnect()
            log.info("MQTT reconnected")

        if self._closing or self._sock is not None:
            return
        await asyncio.sleep(self.min_backoff)
        again = Backoff(min(self.min_backoff * 2, self.max_backoff), self.max_backoff)
        with contextlib.suppress(_Closing):
            await retry_forever(attempt, what="MQTT reconnect failed", retry_on=OSError, backoff=again, log=log)

    def pause_reading(self) -> None:
        if not self._paused:
            self._paused = True
            if self._sock is not None:
                self.loop.remove_reader(self._sock)

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            if self._sock is not None:
                self.loop.add_reader(self._sock, self._readable)
                if getattr(self.client, "buffered", False):  # packets read before the pause
                    self.loop.call_soon(self._readable_if_open)

    def _readable_if_open(self) -> None:
        if not self._paused and self._sock is not None:
            self._readable()

    @property
    def paused(self) -> bool:
        return self._paused

    async def close(self) -> None:
        self._closing = True
        for task in (self._reconnect, self._misc):
            if task is not None:
                task.cancel()
        with contextlib.suppress(Exception):
            self.client.disconnect()
        # let the DISCONNECT packet go out
        for _ in range(20):
            if self._sock is None:
                break
            await asyncio.sleep(0.01)
