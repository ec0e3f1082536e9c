"""A paho-mqtt client with fewer socket calls and less work per packet, for clients run on an event loop.

paho-mqtt 2.2.0 reads every incoming packet with at least three ``recv`` calls (the command byte, each
remaining-length byte, the body) and writes every queued packet with its own ``send``. A gateway at
5,000-10,000 QoS 1 messages/s therefore makes 15,000-30,000 ``recv`` calls and 5,000-10,000 ``send``
calls a second, one small PUBACK each (py-spy: ``_sock_recv`` alone was ~10 % of a gateway's samples).
:class:`BufferedClient`:

* **reads** the socket in chunks of :data:`READ_CHUNK` bytes and serves paho's small reads from that
  buffer. The buffer belongs to one socket: a new connection never sees bytes of the old one.
  :attr:`BufferedClient.buffered` says whether packets are waiting in it. Whoever drives ``loop_read``
  must call it again while that is true, because the socket will not turn readable for bytes already
  read. :class:`iotp.mqtt_asyncio.AsyncioMqtt` does this, also after a pause. paho's own threaded loop
  does not, so this client is only for that driver.
* **writes** a run of queued PUBACKs as one ``send``. The gateway acks in bursts: one Kafka ack releases
  the tickets of hundreds of MQTT messages. PUBACKs carry no completion callbacks in paho (only QoS 0
  PUBLISH and DISCONNECT do), so joining them changes nothing but the number of calls.
* **dispatches** each message straight to ``on_message`` when no per-topic callbacks
  (``message_callback_add``) are registered. paho otherwise walks its topic-filter tree for every message
  and takes a lock to find none: ``iter_match`` alone was ~6 % of a gateway's samples after the two changes
  above.

All three go through paho's private ``_sock_recv`` / ``_out_packet`` / ``_handle_on_message``. As with
:mod:`iotp.paho_speedups`, this only applies to the paho version it was written and tested against
(:data:`PAHO_VERSION`). Any other version gets the stock behaviour (:func:`supported`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes

PAHO_VERSION = "2.2.0"
READ_CHUNK = 256 * 1024
_PUBACK = PacketTypes.PUBACK << 4


def supported() -> bool:
    return paho.mqtt.__version__ == PAHO_VERSION


class BufferedClient(mqtt.Client):
    """:class:`paho.mqtt.client.Client` with chunked reads, joined PUBACK writes and a direct ``on_message``
    dispatch (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._active = supported()
        self._rbuf = b""
        self._rpos = 0
        self._rsock: object = None
        self._pending: Callable[[], int] | None = None
        self.socket_reads = 0  # recv calls on the socket itself (not paho's reads from the buffer)
        self.socket_writes = 0  # send calls on the socket itself

    @property
    def buffered(self) -> bool:
        """Whether bytes read from the current socket still wait: in this buffer, or (TLS) decrypted in
        OpenSSL's, which does not make the socket readable either."""
        if self._rsock is not self._sock:
            return False
        return self._rpos < len(self._rbuf) or (self._pending is not None and self._pending() > 0)

    def _sock_recv(self, bufsize: int) -> bytes:
        if not self._active:
            self.socket_reads += 1
            return super()._sock_recv(bufsize)
        if self._rsock is not self._sock:  # a new connection (or none): drop what the old one left
            self._rbuf, self._rpos, self._rsock = b"", 0, self._sock
            self._pending = getattr(self._sock, "pending", None)  # ssl.SSLSocket.pending
        if self._rpos >= len(self._rbuf):
            self.socket_reads += 1
            data = super()._sock_recv(max(bufsize, READ_CHUNK))
            if not data:  # EOF: paho sees the closed connection as before
                return data
            self._rbuf, self._rpos = data, 0
        start = self._rpos
        self._rpos = min(start + bufsize, len(self._rbuf))
        return self._rbuf[start : self._rpos]

    def _sock_send(self, buf: bytes | bytearray) -> int:
        self.socket_writes += 1
        return super()._sock_send(buf)

    def loop_write(self) -> mqtt.MQTTErrorCode:
        if self._active:
            self._join_pubacks()
        return super().loop_write()

    def _handle_on_message(self, message: mqtt.MQTTMessage) -> None:
        if not self._active or self._on_message_filtered._root._children:  # per-topic callbacks: paho's way
            super()._handle_on_message(message)
            return
        on_message = self.on_message
        if on_message is None:
            return
        with self._in_callback_mutex:
            try:
                on_message(self, self._userdata, message)
            except Exception as err:
                self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                if not self.suppress_exceptions:
                    raise

    def _join_pubacks(self) -> None:
        """Replace the run of not-yet-started PUBACKs at the head of the out queue by one packet."""
        out = self._out_packet
        if len(out) < 2:
            return
        run = []
        while out and (out[0]["command"] & 0xF0) == _PUBACK and out[0]["pos"] == 0:
            run.append(out.popleft())
        if len(run) == 1:
            out.appendleft(run[0])
        elif run:
            data = b"".join(packet["packet"] for packet in run)
            joined = dict(run[0], packet=data, to_process=len(data), mid=0)
            out.appendleft(joined)  # type: ignore[arg-type]
