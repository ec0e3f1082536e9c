"""gateway.client_lease against the real Redis of the test stack: a live holder (refreshing) keeps its
lease, a dead holder on this host loses it at once, one elsewhere once its lease expires, and a holder
that lost its lease is told so."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest
import redis.asyncio as aioredis

from gateway.client_lease import ClientIdLease, LeaseHeld


@pytest.fixture
async def lease_key(stack_settings):
    client = aioredis.from_url(stack_settings.redis_url)
    key = f"t{uuid.uuid4().hex[:6]}:gateway:client:gw"
    yield client, key
    await client.delete(key)
    await client.aclose()


async def test_first_takes_it_and_a_second_is_refused_while_the_first_refreshes(lease_key):
    client, key = lease_key
    first = ClientIdLease(client, key, ttl_s=1.0)
    await first.acquire()
    lost = asyncio.Event()
    keeper = asyncio.ensure_future(first.keep(lost))
    try:
        with pytest.raises(LeaseHeld) as held:
            await ClientIdLease(client, key, ttl_s=1.0).acquire()
        assert held.value.holder == first.holder
        assert not lost.is_set()
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper


async def test_a_dead_holder_on_this_host_is_replaced_at_once(lease_key):
    client, key = lease_key
    newcomer = ClientIdLease(client, key, ttl_s=30.0)
    await client.set(key, f"{newcomer.host}:999999999:dead", px=30_000)  # no such pid
    await asyncio.wait_for(newcomer.acquire(), 2)
    assert (await client.get(key)).decode() == newcomer.holder


async def test_a_silent_holder_elsewhere_is_replaced_once_its_lease_expires(lease_key):
    client, key = lease_key
    await client.set(key, "other-host:1:gone", px=800)
    newcomer = ClientIdLease(client, key, ttl_s=1.0)
    await asyncio.wait_for(newcomer.acquire(), 5)
    assert (await client.get(key)).decode() == newcomer.holder


async def test_a_holder_whose_lease_was_taken_is_told_and_release_leaves_the_new_one(lease_key):
    client, key = lease_key
    first = ClientIdLease(client, key, ttl_s=1.0)
    await first.acquire()
    await client.set(key, "other-host:1:new", px=10_000)  # e.g. after Redis lost our key
    assert await first.refresh() is False
    await first.release()
    assert (await client.get(key)).decode() == "other-host:1:new"
