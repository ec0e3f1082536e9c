"""The object store's listing index: what ``ListObjectsV2`` answers, kept in memory.

tansu 0.6.0 lists a partition's whole ``records/`` prefix on every fetch that has data to return (no
``start-after``), so a listing's cost is paid many times a second and grows with the partition. Walking
and ``stat``-ing the directory for each request made the store the pipeline's limit within minutes
(``docs/performance.md``). The index keeps, per directory, the sorted object names and each object's
ready-made ``<Contents>`` XML; it is loaded from disk the first time a directory is listed and then kept
current by the store's own writes and deletes (the store is the only writer of its directory).
"""

from __future__ import annotations

import bisect
import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

TMP_SUFFIX = ".iotp-tmp"


def etag_of(st: os.stat_result) -> str:
    """A new file per write (temporary file + rename), so inode, mtime and size identify a version."""
    return f'"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"'


def iso_time(st: os.stat_result) -> str:
    return dt.datetime.fromtimestamp(st.st_mtime, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def contents_xml(key: str, st: os.stat_result) -> str:
    return (
        f"<Contents><Key>{escape(key)}</Key><LastModified>{iso_time(st)}</LastModified>"
        f"<ETag>{escape(etag_of(st))}</ETag><Size>{st.st_size}</Size><StorageClass>STANDARD</StorageClass></Contents>"
    )


@dataclass
class _Dir:
    key_prefix: str  # the bucket-relative key of this directory, with a trailing "/" ("" for the bucket)
    names: list[str] = field(default_factory=list)  # object names, sorted
    xml: dict[str, str] = field(default_factory=dict)  # name -> <Contents> fragment
    subdirs: set[str] = field(default_factory=set)


@dataclass
class Page:
    contents: list[str]  # <Contents> fragments
    prefixes: list[str]  # common prefixes (with a delimiter)
    truncated: bool
    last: str  # the last key or prefix returned: the continuation token


class ListingIndex:
    """Listings of the objects under ``root`` (the store's data directory: one subdirectory per bucket)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._dirs: dict[Path, _Dir] = {}

    # ---- kept current by the store -----------------------------------------------------------------
    def _load(self, path: Path, key_prefix: str) -> _Dir:
        d = self._dirs.get(path)
        if d is not None:
            return d
        d = _Dir(key_prefix)
        with os.scandir(path) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    d.subdirs.add(entry.name)
                elif not entry.name.endswith(TMP_SUFFIX):
                    d.xml[entry.name] = contents_xml(key_prefix + entry.name, entry.stat())
        d.names = sorted(d.xml)
        self._dirs[path] = d
        return d

    def stored(self, path: Path, st: os.stat_result) -> None:
        """After ``path`` was written (``st``: its stat): its directory's entry, and new directories in their
        parents."""
        d = self._dirs.get(path.parent)
        if d is not None:
            if path.name not in d.xml:
                bisect.insort(d.names, path.name)
            d.xml[path.name] = contents_xml(d.key_prefix + path.name, st)
        child = path.parent
        while child != self.root and child.parent != child:
            parent = self._dirs.get(child.parent)
            if parent is not None:
                if child.name in parent.subdirs:
                    break
                parent.subdirs.add(child.name)
            child = child.parent

    def removed(self, path: Path) -> None:
        d = self._dirs.get(path.parent)
        if d is not None and d.xml.pop(path.name, None) is not None:
            del d.names[bisect.bisect_left(d.names, path.name)]

    def dir_removed(self, path: Path) -> None:
        self._dirs.pop(path, None)
        parent = self._dirs.get(path.parent)
        if parent is not None:
            parent.subdirs.discard(path.name)

    # ---- answers -----------------------------------------------------------------------------------
    def _below(self, path: Path, key_prefix: str) -> list[tuple[str, str]]:
        """(key, <Contents>) of every object below ``path``, recursively, unsorted."""
        d = self._load(path, key_prefix)
        out = [(key_prefix + n, d.xml[n]) for n in d.names]
        for sub in d.subdirs:
            out += self._below(path / sub, f"{key_prefix}{sub}/")
        return out

    def page(self, bucket_dir: Path, prefix: str, delimiter: str, after: str, max_keys: int) -> Page:
        """One ``ListObjectsV2`` page: the keys that start with ``prefix`` and sort after ``after``."""
        base = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
        path = bucket_dir.joinpath(*base[:-1].split("/")) if base else bucket_dir
        if not path.is_dir():
            return Page([], [], False, "")
        d = self._load(path, base)
        if not d.subdirs:  # the hot case (a partition's records/): sorted already, no copy
            names, name_prefix = d.names, prefix[len(base) :]
            lo = bisect.bisect_left(names, name_prefix)
            if after.startswith(base):
                lo = max(lo, bisect.bisect_right(names, after[len(base) :]))
            elif after > base:  # every key here sorts before ``after``
                lo = len(names)
            contents: list[str] = []
            for i in range(lo, len(names)):
                if not names[i].startswith(name_prefix):
                    break
                if len(contents) >= max_keys:
                    return Page(contents, [], True, base + names[i - 1])
                contents.append(d.xml[names[i]])
            return Page(contents, [], False, base + names[lo + len(contents) - 1] if contents else "")
        entries: list[tuple[str, str | None]]
        if delimiter == "/":  # this directory's objects, its subdirectories as common prefixes
            entries = [(base + n, d.xml[n]) for n in d.names] + [(f"{base}{s}/", None) for s in d.subdirs]
        else:  # a recursive listing (tansu does one at start)
            entries = list(self._below(path, base))
        entries.sort(key=lambda e: e[0])
        found: list[str] = []
        prefixes: list[str] = []
        last = ""
        for key, xml in entries:
            if (after and key <= after) or not key.startswith(prefix):
                continue
            if xml is not None and delimiter and delimiter in key[len(prefix) :]:
                key, xml = prefix + key[len(prefix) :].split(delimiter, 1)[0] + delimiter, None
                if prefixes and prefixes[-1] == key:
                    continue
            if len(found) + len(prefixes) >= max_keys:
                return Page(found, prefixes, True, last)
            if xml is None:
                prefixes.append(key)
            else:
                found.append(xml)
            last = key
        return Page(found, prefixes, False, last)
