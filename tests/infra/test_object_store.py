"""The local broker's object store (infra/object_store.py) over real HTTP: the conditional writes tansu relies
on, ranges, listings and deletes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from infra.object_store import ObjectStore, make_app
from infra.ports import free_port


@pytest.fixture
async def base_url(tmp_path) -> AsyncIterator[str]:
    port = free_port()
    runner = web.AppRunner(make_app(ObjectStore(tmp_path / "objects", ("tansu",))), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}/tansu"
    finally:
        await runner.cleanup()


async def test_create_only_if_absent(base_url):
    async with httpx.AsyncClient() as http:
        first = await http.put(f"{base_url}/p/0/watermark.json", content=b"1", headers={"If-None-Match": "*"})
        assert first.status_code == 200 and first.headers["ETag"]
        again = await http.put(f"{base_url}/p/0/watermark.json", content=b"2", headers={"If-None-Match": "*"})
        assert again.status_code == 412
        assert (await http.get(f"{base_url}/p/0/watermark.json")).content == b"1"


async def test_update_only_if_the_etag_still_matches(base_url):
    """Two writers read the same version; the first update wins, the second gets 412 and must re-read."""
    url = f"{base_url}/p/0/watermark.json"
    async with httpx.AsyncClient() as http:
        etag = (await http.put(url, content=b"v1")).headers["ETag"]
        won = await http.put(url, content=b"v2-a", headers={"If-Match": etag})
        lost = await http.put(url, content=b"v2-b", headers={"If-Match": etag})
        assert won.status_code == 200 and lost.status_code == 412
        current = await http.get(url)
        assert current.content == b"v2-a" and current.headers["ETag"] == won.headers["ETag"] != etag
        assert (await http.put(url, content=b"x", headers={"If-Match": '"nope"'})).status_code == 412
        missing = await http.put(f"{base_url}/other", content=b"x", headers={"If-Match": etag})
        assert missing.status_code == 412


async def test_get_head_range_and_missing(base_url):
    async with httpx.AsyncClient() as http:
        await http.put(f"{base_url}/r/1.batch", content=b"0123456789")
        assert (await http.get(f"{base_url}/r/1.batch", headers={"Range": "bytes=2-4"})).content == b"234"
        assert (await http.get(f"{base_url}/r/1.batch", headers={"Range": "bytes=7-"})).content == b"789"
        assert (await http.get(f"{base_url}/r/1.batch", headers={"Range": "bytes=-3"})).content == b"789"
        head = await http.head(f"{base_url}/r/1.batch")
        assert head.status_code == 200 and head.headers["Content-Length"] == "10"
        missing = await http.get(f"{base_url}/r/2.batch")
        assert missing.status_code == 404 and b"NoSuchKey" in missing.content
        assert (await http.put(f"{base_url}/a/%2E%2E/%2E%2E/escape", content=b"x")).status_code == 400


async def test_list_with_prefix_delimiter_and_pages(base_url):
    async with httpx.AsyncClient() as http:
        keys = [f"t/a/partitions/{p}/records/{o:05d}.batch" for p in range(2) for o in range(3)]
        for key in [*keys, "t/a/meta.json", "t/b/meta.json"]:
            await http.put(f"{base_url}/{key}", content=b"x")
        listing = (await http.get(base_url, params={"list-type": "2", "prefix": "t/", "delimiter": "/"})).text
        assert "<Prefix>t/a/</Prefix>" in listing and "<Prefix>t/b/</Prefix>" in listing
        assert "<Key>" not in listing
        seen: list[str] = []
        token = None
        while True:
            params = {"list-type": "2", "prefix": "t/a/partitions/", "max-keys": "4"}
            if token:
                params["continuation-token"] = token
            page = (await http.get(base_url, params=params)).text
            seen += [part.split("</Key>")[0] for part in page.split("<Key>")[1:]]
            if "<IsTruncated>true</IsTruncated>" not in page:
                break
            token = page.split("<NextContinuationToken>")[1].split("</NextContinuationToken>")[0]
        assert seen == sorted(keys)


async def test_delete_one_and_many(base_url):
    async with httpx.AsyncClient() as http:
        for key in ("d/1", "d/2", "d/3"):
            await http.put(f"{base_url}/{key}", content=b"x")
        assert (await http.delete(f"{base_url}/d/1")).status_code == 204
        body = "<Delete><Object><Key>d/2</Key></Object><Object><Key>d/3</Key></Object></Delete>"
        assert (await http.post(f"{base_url}?delete", content=body)).status_code == 200
        listing = (await http.get(base_url, params={"list-type": "2", "prefix": "d/"})).text
        assert "<KeyCount>0</KeyCount>" in listing


async def test_listing_follows_writes_deletes_and_a_restart(tmp_path, base_url):
    """The listing index is loaded once and then kept current by the store's own writes and deletes."""
    async with httpx.AsyncClient() as http:

        async def keys(prefix: str) -> list[str]:
            page = (await http.get(base_url, params={"list-type": "2", "prefix": prefix})).text
            return [part.split("</Key>")[0] for part in page.split("<Key>")[1:]]

        await http.put(f"{base_url}/p/records/001.batch", content=b"a")
        assert await keys("p/records/") == ["p/records/001.batch"]  # index loaded here
        await http.put(f"{base_url}/p/records/000.batch", content=b"b")
        await http.put(f"{base_url}/p/records/002.batch", content=b"c")
        assert await keys("p/records/") == [f"p/records/00{i}.batch" for i in range(3)]
        await http.delete(f"{base_url}/p/records/001.batch")
        assert await keys("p/records/") == ["p/records/000.batch", "p/records/002.batch"]
        await http.put(f"{base_url}/p/other/x", content=b"d")  # a new directory under a listed one
        assert await keys("p/") == ["p/other/x", "p/records/000.batch", "p/records/002.batch"]
    # a new store over the same directory (a restart) lists the same from disk
    fresh = ObjectStore(tmp_path / "objects", ("tansu",)).index.page(tmp_path / "objects" / "tansu", "p/", "", "", 1000)
    assert [c.split("<Key>")[1].split("</Key>")[0] for c in fresh.contents] == [
        "p/other/x",
        "p/records/000.batch",
        "p/records/002.batch",
    ]


def test_listing_pages_match_a_sorted_scan(tmp_path):
    """Every page of every prefix, delimiter and page size equals the brute-force answer."""
    import random

    from infra.object_listing import ListingIndex

    rng = random.Random(7)
    bucket = tmp_path / "b"
    keys = sorted({f"t/{rng.choice('ab')}/r/{rng.randrange(60):03d}.batch" for _ in range(80)} | {"t/a/w.json", "t/z"})
    for key in keys:
        (bucket / key).parent.mkdir(parents=True, exist_ok=True)
        (bucket / key).write_bytes(b"x")
    index = ListingIndex(tmp_path)
    for prefix in ("", "t/", "t/a/", "t/a/r/", "t/a/r/01", "t/b/r/", "t/q"):
        for delimiter in ("", "/"):
            for max_keys in (1, 7, 1000):
                expected: list[str] = []
                for key in (k for k in keys if k.startswith(prefix)):
                    rest = key[len(prefix) :]
                    item = prefix + rest.split("/", 1)[0] + "/" if delimiter and "/" in rest else key
                    if not expected or expected[-1] != item:
                        expected.append(item)
                got: list[str] = []
                after = ""
                while True:
                    page = index.page(bucket, prefix, delimiter, after, max_keys)
                    got += [c.split("<Key>")[1].split("</Key>")[0] for c in page.contents] + page.prefixes
                    if not page.truncated:
                        break
                    after = page.last
                assert sorted(got) == expected, (prefix, delimiter, max_keys)
