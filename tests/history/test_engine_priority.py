"""The embedded ClickHouse engine's threads are reniced, the Python threads are not (history.engine_priority).

Run in a child process: nice values stay with the threads, and the test process's own chDB threads must
not be left niced for the tests after this one."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    """
    import json, os, sys, threading
    import clickhouse_connect
    from history.engine_priority import engine_threads, renice_engine_threads

    client = clickhouse_connect.get_client(dsn="chdb://" + sys.argv[1])
    client.command("CREATE TABLE t (x UInt64) ENGINE = MergeTree ORDER BY x")
    for _ in range(3):  # parts to merge, and a query's pipeline threads
        client.command("INSERT INTO t SELECT number FROM numbers(100000)")
    client.query("SELECT sum(x) FROM t").result_rows
    worker = threading.Thread(target=threading.Event().wait, args=(30,), daemon=True)  # a Python thread
    worker.start()
    before = len(engine_threads())
    changed = renice_engine_threads(10)
    tasks = f"/proc/{os.getpid()}/task"
    threads = []
    for tid in os.listdir(tasks):
        comm = open(f"{tasks}/{tid}/comm").read().strip()
        threads.append({"tid": int(tid), "comm": comm, "nice": os.getpriority(os.PRIO_PROCESS, int(tid))})
    print(json.dumps({"engine": before, "changed": changed, "main": os.getpid(),
                      "worker": worker.native_id, "threads": threads}))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/task")
def test_the_engine_threads_are_niced_and_the_python_threads_are_not(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "chdb")], capture_output=True, text=True, timeout=120, check=True
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    threads = {t["tid"]: t for t in report["threads"]}
    main_comm = threads[report["main"]]["comm"]
    engine = [t for t in threads.values() if t["comm"] != main_comm]
    assert report["engine"] >= 2 and report["changed"] == report["engine"]  # chDB started threads of its own
    assert engine and all(t["nice"] == 10 for t in engine), engine
    assert threads[report["main"]]["nice"] == 0
    assert threads[report["worker"]]["nice"] == 0 and threads[report["worker"]]["comm"] == main_comm
