"""Retention for the local durable broker: delete record batches that every pipeline consumer has passed.

tansu 0.6.0 has no retention for its S3 engine and does not implement ``DeleteRecords``, and it lists a
partition's whole ``records/`` prefix on every fetch, so without retention the local store grows without
bound and every fetch gets slower (``docs/performance.md``). The object store therefore trims the logs
itself, by a rule that never drops a record a pipeline consumer still needs:

- a topic is trimmed only by an explicit rule ``TOPIC=GROUP[,GROUP...]``: the consumer groups that must
  have read it (the stack passes: readings = stream worker + ClickHouse sink; aggregates, alerts = the
  sink). A topic without a rule (dead letters, anything an operator created) is never trimmed;
- a partition is trimmed only once every group of its rule has committed an offset on it, and only below
  the lowest committed offset of *any* group that committed on it (rule or not);
- a batch goes only when the next batch starts at or below that floor minus one, so the record just
  below the floor (the one the stream snapshots' offset marks fingerprint, ``iotp.kafka_marks``) stays;
- and only when it is older than ``min_age_s``, so a consumer started from the earliest offset still finds
  the recent past.

tansu takes the log start from the first object it lists, so a trimmed partition simply starts later
(``beginning_offsets`` moves), exactly like a Kafka log after retention.

Layout tansu uses (seen with 0.6.0): ``clusters/<c>/topics/<t>/partitions/<p:010>/records/<offset:020>.batch``
and committed offsets in ``clusters/<c>/groups/consumers/<group>/offsets/<t>/partitions/<p:010>.json``
(``{"offset": N, ...}``).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("iotp.kafka_retention")

BATCH_SUFFIX = ".batch"


@dataclass(frozen=True)
class Rule:
    topic: str
    groups: frozenset[str]

    @classmethod
    def parse(cls, text: str) -> Rule:
        topic, sep, groups = text.partition("=")
        names = frozenset(g.strip() for g in groups.split(",") if g.strip())
        if not sep or not topic.strip() or not names:
            raise ValueError(f"retention rule {text!r}: expected TOPIC=GROUP[,GROUP...]")
        return cls(topic.strip(), names)


def batches_to_delete(batches: list[tuple[int, float]], floor: int, now: float, min_age_s: float) -> list[int]:
    """Base offsets of the batches to delete: ``batches`` = (base offset, mtime) sorted by offset; a batch
    goes when the next one starts at or below ``floor - 1`` (so it holds nothing at or above ``floor - 1``)
    and it is older than ``min_age_s``. The last batch always stays."""
    out: list[int] = []
    for (base, mtime), (next_base, _) in itertools.pairwise(batches):
        if next_base > floor - 1:
            break
        if now - mtime < min_age_s:
            break  # batches are written in offset order: the later ones are younger still
        out.append(base)
    return out


def committed_offsets(cluster: Path, topic: str, partition_dir: str) -> dict[str, int]:
    """Group -> committed offset on one partition, read from tansu's group objects."""
    out: dict[str, int] = {}
    consumers = cluster / "groups" / "consumers"
    if not consumers.is_dir():
        return out
    for group_dir in consumers.iterdir():
        path = group_dir / "offsets" / topic / "partitions" / f"{partition_dir}.json"
        try:
            offset = json.loads(path.read_bytes()).get("offset")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(offset, int) and offset >= 0:
            out[group_dir.name] = offset
    return out


@dataclass
class Trimmed:
    topic: str
    partition: int
    deleted: int
    floor: int


def plan(
    bucket_dir: Path, rules: list[Rule], min_age_s: float, now: float | None = None
) -> list[tuple[Trimmed, list[Path]]]:
    """What to delete now, per partition that a rule covers (see the module docstring)."""
    now = time.time() if now is None else now
    by_topic = {r.topic: r for r in rules}
    out: list[tuple[Trimmed, list[Path]]] = []
    clusters = bucket_dir / "clusters"
    if not clusters.is_dir():
        return out
    for cluster in clusters.iterdir():
        topics = cluster / "topics"
        for topic, rule in by_topic.items():
            partitions = topics / topic / "partitions"
            if not partitions.is_dir():
                continue
            for pdir in sorted(partitions.iterdir()):
                records = pdir / "records"
                committed = committed_offsets(cluster, topic, pdir.name)
                if not rule.groups <= committed.keys() or not records.is_dir():
                    continue
                floor = min(committed.values())
                batches = []
                with os.scandir(records) as it:
                    for entry in it:
                        if entry.name.endswith(BATCH_SUFFIX):
                            try:
                                batches.append((int(entry.name[: -len(BATCH_SUFFIX)]), entry.stat().st_mtime))
                            except (ValueError, OSError):
                                continue
                batches.sort()
                doomed = batches_to_delete(batches, floor, now, min_age_s)
                if doomed:
                    paths = [records / f"{base:020d}{BATCH_SUFFIX}" for base in doomed]
                    out.append((Trimmed(topic, int(pdir.name), len(doomed), floor), paths))
    return out
