"""The garbage collector's thresholds for the long-running services (``IOTP_GC_THRESHOLDS``).

CPython starts a generation-0 collection every 700 net container allocations. The services allocate
several containers per message (paho's message object and its lock, the reading's dicts and lists, Kafka
record objects), so at thousands of messages per second the collector ran hundreds of times a second and
kept walking the same long-lived objects (in-flight messages, the stream job's device states). Measured
with ``benchmarks/ingest_bench.py --paced``: a gateway at 8,000 msgs/s spends about a tenth of its CPU less
with (100000, 20, 100) (docs/performance.md).

:func:`tune` also ``gc.freeze()``-s what exists when it is called (modules, settings, schemas), so no
collection ever walks it again. Reference counting still frees everything that is not in a cycle at once;
only cyclic garbage waits longer, bounded by the thresholds.
"""

from __future__ import annotations

import gc

from iotp.settings import Settings


def tune(settings: Settings) -> tuple[int, int, int]:
    """Freeze the objects alive now and apply ``settings.gc_thresholds``; returns the thresholds in force."""
    gc.freeze()
    gc.set_threshold(*settings.gc_thresholds)
    return gc.get_threshold()
