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

* **decodes** each complete QoS 0 / 1 PUBLISH at the head of the buffer itself (:meth:`BufferedClient._read_publish`)
  and hands it to the same ``_handle_on_message``: no per-packet state machine of three buffer reads and a
  rebuilt ``_in_packet`` dict, no format strings for ``struct``, no debug-log formatting, and a message
  whose ``info`` (an ``MQTTMessageInfo`` with a ``threading.Condition``, only meaningful for outgoing
  messages) is built only if someone reads it. paho's packet path was ~37 % of a gateway's samples at
  8,000 msgs/s after the three changes above, the gateway's callback ~25 %. Anything else -- another packet type,
  QoS 2, MQTT 5 properties that are not empty, a packet not yet complete in the buffer -- goes through
  paho as before.

All four go through paho's private parts (``_sock_recv``, ``_packet_read``, ``_in_packet``, ``_out_packet``,
``_handle_on_message``, ``_send_puback``, ``_last_bytes_received``). As with
:mod:`iotp.paho_speedups`, this only applies to the paho version it was written and tested against
(:data:`PAHO_VERSION`). Any other version gets the stock behaviour (:func:`supported`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt import _packet
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

PAHO_VERSION = "2.2.0"
READ_CHUNK = 256 * 1024
_PUBACK = PacketTypes.PUBACK << 4
_PUBLISH = PacketTypes.PUBLISH << 4
_SUCCESS = mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS


class IncomingMessage(mqtt.MQTTMessage):
    """An incoming :class:`paho.mqtt.client.MQTTMessage` whose ``info`` and (MQTT 5, none received) empty
    ``properties`` are built on first use: paho gives every message an ``info`` with a
    ``threading.Condition``, though only outgoing messages use it, and a new ``Properties`` object."""

    __slots__ = ()

    def __init__(self, mid: int, topic: bytes) -> None:  # the fields of MQTTMessage.__init__ but ``info``
        self.timestamp = 0.0
        self.state = mqtt.mqtt_ms_invalid
        self.dup = False
        self.mid = mid
        self._topic = topic
        self.payload = b""
        self.qos = 0
        self.retain = False
        self.properties = None

    @property
    def info(self) -> mqtt.MQTTMessageInfo:
        try:
            return _INFO_SLOT.__get__(self)
        except AttributeError:
            info = mqtt.MQTTMessageInfo(self.mid)
            _INFO_SLOT.__set__(self, info)
            return info

    @info.setter
    def info(self, value: mqtt.MQTTMessageInfo) -> None:
        _INFO_SLOT.__set__(self, value)

    @property
    def properties(self) -> Properties | None:
        value = _PROPERTIES_SLOT.__get__(self)
        if value is _EMPTY_V5:
            value = _packet.Properties(PacketTypes.PUBLISH)  # what paho would have given: empty
            _PROPERTIES_SLOT.__set__(self, value)
        return value

    @properties.setter
    def properties(self, value: Properties | None) -> None:
        _PROPERTIES_SLOT.__set__(self, value)


# the slot descriptors the two properties above stand in front of
_INFO_SLOT = mqtt.MQTTMessage.__dict__["info"]
_PROPERTIES_SLOT = mqtt.MQTTMessage.__dict__["properties"]
_EMPTY_V5: Any = object()  # in the properties slot: MQTT 5, no properties received (built when read)


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
        self.fast_publishes = 0  # PUBLISH packets decoded by _read_publish (not paho's packet path)

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
        if self._drained:
            data = self._refill(max(bufsize, READ_CHUNK))
            if not data:  # EOF: paho sees the closed connection as before
                return data
        start = self._rpos
        self._rpos = min(start + bufsize, len(self._rbuf))
        return self._rbuf[start : self._rpos]

    @property
    def _drained(self) -> bool:
        """Nothing of the current socket's left in the buffer (or it holds another connection's bytes)."""
        return self._rsock is not self._sock or self._rpos >= len(self._rbuf)

    def _refill(self, size: int) -> bytes:
        """Read the socket into the (empty) buffer; a new connection (or none) first drops what the old one
        left. Returns what was read (b"" at EOF, and the buffer stays empty); raises what the socket raises."""
        if self._rsock is not self._sock:
            self._rbuf, self._rpos, self._rsock = b"", 0, self._sock
            self._pending = getattr(self._sock, "pending", None)  # ssl.SSLSocket.pending
        self.socket_reads += 1
        data = super()._sock_recv(size)
        if data:
            self._rbuf, self._rpos = data, 0
        return data

    def _packet_read(self) -> mqtt.MQTTErrorCode:
        if self._active and self._in_packet["command"] == 0:
            if self._drained:
                try:  # fill the buffer here, so the packet after a socket read is decoded fast as well
                    self._refill(READ_CHUNK)
                except OSError:  # nothing to read, or the connection failed: paho's read says so its way
                    return super()._packet_read()
            rc = self._read_publish()
            if rc is not None:
                return rc
        return super()._packet_read()

    def _read_publish(self) -> mqtt.MQTTErrorCode | None:
        """Handle the QoS 0 / 1 PUBLISH at the head of the buffer as paho's ``_handle_publish`` would (less
        its debug log line), or return None, having consumed nothing, when the head is anything else."""
        buf, start = self._rbuf, self._rpos
        size = len(buf)
        if start >= size:
            return None
        header = buf[start]
        if header & 0xF0 != _PUBLISH or header & 0x06 > 0x02:  # not a PUBLISH, or QoS 2 (or the invalid 3)
            return None
        length, shift, i = 0, 0, start + 1
        while True:  # remaining length: at most 4 bytes of 7 bits each
            if i >= size or shift > 21:
                return None
            byte = buf[i]
            i += 1
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
        end = i + length
        if end > size or length < 2:
            return None
        topic_start = i + 2
        topic_end = topic_start + ((buf[i] << 8) | buf[i + 1])
        if topic_end > end:
            return None
        qos = (header & 0x06) >> 1
        mid = 0
        i = topic_end
        if qos:
            if i + 2 > end:
                return None
            mid = (buf[i] << 8) | buf[i + 1]
            i += 2
        properties = None
        if self._protocol == mqtt.MQTTv5:
            if i >= end or buf[i] != 0:  # properties present (or no room for their length): paho decodes
                return None
            i += 1
            properties = _EMPTY_V5  # empty, as paho's own would be, built if the callback reads it
        elif topic_end == topic_start:
            return None  # MQTT 3 forbids an empty topic: paho reports the malformed packet
        self._rpos = end
        self.fast_publishes += 1
        received = mqtt.time_func()
        with self._msgtime_mutex:
            self._last_bytes_received = received
        message = IncomingMessage(mid, buf[topic_start:topic_end])
        message.dup = bool(header & 0x08)
        message.qos = qos
        message.retain = bool(header & 0x01)
        message.properties = properties
        message.payload = buf[i:end]
        message.timestamp = received
        self._handle_on_message(message)
        if qos and not self._manual_ack:
            return self._send_puback(mid)
        return _SUCCESS

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
