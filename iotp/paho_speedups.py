"""Cheaper MQTT 5 property objects for paho-mqtt's incoming PUBLISH packets.

paho-mqtt 2.2.0 builds a new :class:`paho.mqtt.properties.Properties` for every MQTT 5 PUBLISH it
receives, and its ``__init__`` rebuilds the protocol's three lookup tables (27 names, 27 property specs)
each time, then ``unpack`` clears all 27 possible attributes by name. In a gateway profile (py-spy, one
gateway draining a Mosquitto backlog) that was about 40 % of the process's time. The tables are constants
of the protocol, so :class:`SharedTableProperties` builds them once and shares them between instances;
every method of the real class is inherited unchanged (it is a subclass, so ``isinstance`` checks hold).

:func:`install` swaps it in for the PUBLISH decoder only (``paho.mqtt._packet``), and only for the paho
version it was written against: any other version is left alone (and logged), so an upgrade can never
run with a stale patch. ``tests/iotp/test_paho_speedups.py`` checks decoding is identical.
"""

from __future__ import annotations

import logging
from typing import Any

import paho.mqtt
from paho.mqtt import _packet
from paho.mqtt.properties import Properties

log = logging.getLogger("iotp.mqtt")

PAHO_VERSION = "2.2.0"
_TABLE_ATTRS = ("packetType", "types", "names", "properties")


class SharedTableProperties(Properties):
    """A :class:`Properties` whose lookup tables are built once per process (they never change)."""

    _tables: tuple[Any, Any, Any] | None = None

    def __init__(self, packetType: int) -> None:
        tables = SharedTableProperties._tables
        if tables is None:
            super().__init__(packetType)
            SharedTableProperties._tables = (self.types, self.names, self.properties)
            return
        self.packetType = packetType
        self.types, self.names, self.properties = tables

    def clear(self) -> None:
        """Remove the property attributes that are set (the stock one tries all 27 names)."""
        for name in [name for name in vars(self) if name not in _TABLE_ATTRS]:
            delattr(self, name)


def install() -> bool:
    """Use :class:`SharedTableProperties` for incoming PUBLISH packets; False if paho is another version."""
    if paho.mqtt.__version__ != PAHO_VERSION:
        log.info("paho-mqtt %s is not %s: MQTT 5 property speed-up not installed", paho.mqtt.__version__, PAHO_VERSION)
        return False
    _packet.Properties = SharedTableProperties  # type: ignore[misc]
    return True
