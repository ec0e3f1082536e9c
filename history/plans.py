"""Sink plans: the offset range and dedup token of each planned per-partition insert, kept in ClickHouse
(``sink_plans``) so that a restarted sink re-forms exactly the same block (see docs/history.md).

A plan also carries the fingerprint of its last record (``iotp.kafka_marks``): a plan whose record is not
in Kafka any more with that fingerprint is about another incarnation of the topic and must not be replayed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiokafka import TopicPartition
from clickhouse_connect.driver.client import Client

from iotp.kafka_marks import Mark, check_marks
from iotp.settings import Settings

log = logging.getLogger("iotp.sink")

PLAN_COLUMNS = ["group_id", "topic", "partition", "first_offset", "last_offset", "token", "last_fp"]


@dataclass(frozen=True, slots=True)
class Plan:
    first: int
    last: int
    token: str
    fp: str = ""  # fingerprint of the record at ``last``: which incarnation of the topic the plan is about


def write_plans(client: Client, database: str, group: str, plans: list[tuple[TopicPartition, Plan]]) -> None:
    rows = [[group, tp.topic, tp.partition, p.first, p.last, p.token, p.fp] for tp, p in plans]
    client.insert(f"{database}.sink_plans", rows, column_names=PLAN_COLUMNS)


def read_plans(client: Client, database: str, group: str, tps: list[TopicPartition]) -> dict[TopicPartition, Plan]:
    """The newest plan of each of ``tps`` (of this consumer group)."""
    result = client.query(
        "SELECT topic, partition, argMax(first_offset, (created, last_offset)), "
        "argMax(last_offset, (created, last_offset)), argMax(token, (created, last_offset)), "
        "argMax(last_fp, (created, last_offset)) "
        f"FROM {database}.sink_plans WHERE group_id = {{g:String}} "
        "AND topic IN {topics:Array(String)} GROUP BY topic, partition",
        parameters={"g": group, "topics": sorted({tp.topic for tp in tps})},
    )
    wanted = set(tps)
    out = {}
    for topic, partition, first, last, token, fp in result.result_rows:
        tp = TopicPartition(topic, partition)
        if tp in wanted:
            out[tp] = Plan(first, last, token, fp)
    return out


async def current_incarnation(settings: Settings, plans: dict[TopicPartition, Plan]) -> dict[TopicPartition, Plan]:
    """The plans whose last record is still in Kafka with the same fingerprint. The others are about
    another incarnation of the topic (wiped broker, recreated topic): replaying their tokens would make
    ClickHouse drop new records as duplicates, so they are left out, loudly."""
    if not plans:
        return plans
    marks = {tp: Mark(p.last + 1, p.fp) for tp, p in plans.items()}
    verdicts = await check_marks(settings, marks)
    for _ in range(2):  # the broker did not answer in time (busy, restarting): ask again before giving up
        unknown = {tp: marks[tp] for tp, v in verdicts.items() if v.unknown}
        if not unknown:
            break
        verdicts.update(await check_marks(settings, unknown))
    kept = {}
    for tp, plan in plans.items():
        verdict = verdicts[tp]
        if verdict.valid:
            kept[tp] = plan
            continue
        log.warning(
            "discarding the sink plan %s[%d..%d] (token %s): %s; the partition is written with new tokens",
            tp,
            plan.first,
            plan.last,
            plan.token,
            verdict.reason,
        )
    return kept
