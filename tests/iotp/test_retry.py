"""iotp.retry: the backoff sequence, retrying until success, what is logged, how a call site gives up."""

from __future__ import annotations

import itertools
import logging

import pytest

from iotp.retry import Backoff, describe, retry_forever

log = logging.getLogger("test.retry")


def test_backoff_doubles_up_to_the_cap_and_stays_there() -> None:
    delays = list(itertools.islice(Backoff(0.1, 1.0).delays(), 7))
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])


def test_backoff_factor() -> None:
    assert list(itertools.islice(Backoff(1.0, 30.0, factor=3.0).delays(), 5)) == [1.0, 3.0, 9.0, 27.0, 30.0]


class Flaky:
    """Fails ``failures`` times with ``exc``, then returns ``"ok"``."""

    def __init__(self, failures: int, exc: BaseException) -> None:
        self.failures, self.exc, self.calls = failures, exc, 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc
        return "ok"


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


async def test_retries_until_success_with_capped_backoff(caplog: pytest.LogCaptureFixture) -> None:
    attempt, sleeps, seen = Flaky(6, OSError("refused")), Sleeps(), []
    with caplog.at_level(logging.WARNING, logger="test.retry"):
        result = await retry_forever(
            attempt,
            what="thing failed",
            retry_on=OSError,
            backoff=Backoff(0.5, 4.0),
            log=log,
            on_retry=lambda exc, delay: seen.append((str(exc), delay)),
            sleep=sleeps,
        )
    assert result == "ok"
    assert attempt.calls == 7
    assert sleeps.delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert seen == [("refused", d) for d in sleeps.delays]
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "thing failed (OSError: refused); retrying in 0.5s"
    assert len(messages) == 6
    assert all(r.levelno == logging.WARNING for r in caplog.records)


async def test_success_at_once_neither_sleeps_nor_logs(caplog: pytest.LogCaptureFixture) -> None:
    sleeps = Sleeps()
    with caplog.at_level(logging.DEBUG, logger="test.retry"):
        assert (
            await retry_forever(
                Flaky(0, OSError()), what="x", retry_on=OSError, backoff=Backoff(1, 2), log=log, sleep=sleeps
            )
            == "ok"
        )
    assert sleeps.delays == []
    assert caplog.records == []


async def test_other_exceptions_propagate_at_once() -> None:
    attempt, sleeps = Flaky(1, ValueError("bug")), Sleeps()
    with pytest.raises(ValueError, match="bug"):
        await retry_forever(
            attempt, what="x", retry_on=(OSError, KeyError), backoff=Backoff(1, 2), log=log, sleep=sleeps
        )
    assert attempt.calls == 1
    assert sleeps.delays == []


async def test_on_retry_raising_gives_up_before_sleeping() -> None:
    attempt, sleeps = Flaky(5, OSError("down")), Sleeps()

    def stop(exc: BaseException, delay: float) -> None:
        if attempt.calls == 2:
            raise RuntimeError("stopping") from exc

    with pytest.raises(RuntimeError, match="stopping"):
        await retry_forever(
            attempt, what="x", retry_on=OSError, backoff=Backoff(1, 2), log=log, on_retry=stop, sleep=sleeps
        )
    assert attempt.calls == 2
    assert sleeps.delays == [1]


async def test_default_sleep_is_asyncio_sleep() -> None:
    attempt = Flaky(2, OSError())
    assert await retry_forever(attempt, what="x", retry_on=OSError, backoff=Backoff(0.001, 0.002), log=log) == "ok"
    assert attempt.calls == 3


def test_describe_names_the_type_and_cuts_long_messages() -> None:
    assert describe(TimeoutError()) == "TimeoutError"
    assert describe(OSError("refused")) == "OSError: refused"
    assert len(describe(RuntimeError("x" * 5000))) == 300
