"""Guards for reading untrusted STAC sources: per-item checks, a problem report, paging loop guards
and a static catalog walk that isolates each item.

STAC items and APIs are third-party input. A batch of items (a search, a poll, a catalog listing) must
not fail because one item in it is malformed, and a misbehaving API must not keep a client paging
forever. The rules:

- **Per-item isolation**: each item is parsed and checked on its own (:func:`checked_item`); a
  malformed one (not a Feature, no id or an unusable id, an impossible or unparseable datetime,
  ``updated`` that is not an RFC 3339 string, is in the future) is skipped and recorded in a
  :class:`SourceReport` (logged with its id, or its href / page place when it has no usable id). Its
  neighbours are read as usual.
- **Which time orders an item** (:func:`item_time`): its ``updated`` property when present. When
  ``updated`` is absent (or null) the item's own ``created``, else ``datetime``, else
  ``start_datetime`` -- times in the item, never the time a file was written or copied (a file mtime
  is "when we saw it", later than the ``updated`` of items published after it, and would move a
  cursor past them). An ``updated`` that is present but malformed makes the item malformed (skipped),
  never silently replaced. A time after ``now + FUTURE_TOLERANCE`` is refused: such an item is
  reported and skipped *for now* and comes back on a later poll once its time has come, so a cursor
  only ever takes validated times no later than ``now + FUTURE_TOLERANCE``.
- **Paging loop guard** (:class:`PageGuard`): a ``next`` link already followed (same href, method and
  body), or a page whose items are exactly those of an earlier page, ends the walk.
- **Static catalogs** (:func:`walk_items`): item and child links are followed one by one (each read in
  its own ``try``; a link seen twice -- a cycle -- is followed once); item JSON files under a local
  collection's folder that no link reaches are *reported by name, not picked up*
  (:func:`unlinked_item_files`): a catalog's links say what belongs to it, and a stray file must not
  inject an item, but a forgotten link must not go unnoticed either.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import pystac

from stacchip_assets.errors import StacchipError

log = logging.getLogger(__name__)

#: How far in the future an item time may lie (clock skew between the publisher and us).
FUTURE_TOLERANCE = dt.timedelta(hours=1)
#: Problems kept per report (the count is exact; names beyond this are summarised).
MAX_REPORTED = 200
_TIME_PROPERTIES = ("datetime", "start_datetime", "end_datetime", "created")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


@dataclass
class SourceReport:
    """What a read of a batch of items skipped or warned about (for tick logs and asset metadata)."""

    skipped: list[tuple[str, str]] = field(default_factory=list)  # (item id or href, reason)
    warnings: list[str] = field(default_factory=list)
    skipped_count: int = 0
    truncated: str | None = None  # why a walk ended early (loop, tick budget), if it did

    def skip(self, name: str, reason: str, context: str = "") -> None:
        self.skipped_count += 1
        log.warning("%sskipped item %s: %s", f"{context}: " if context else "", name, reason)
        if len(self.skipped) < MAX_REPORTED:
            self.skipped.append((name, reason))

    def warn(self, message: str) -> None:
        log.warning("%s", message)
        if len(self.warnings) < MAX_REPORTED:
            self.warnings.append(message)

    def stop(self, reason: str) -> None:
        """Record that a walk ended early (and warn)."""
        self.truncated = reason
        self.warn(reason)

    def __bool__(self) -> bool:
        return bool(self.skipped_count or self.warnings)

    def lines(self, limit: int = 20) -> list[str]:
        """Short human-readable lines: skipped items first, then warnings."""
        out = [f"skipped {name}: {reason}" for name, reason in self.skipped[:limit]]
        if self.skipped_count > min(len(self.skipped), limit):
            out.append(f"... and {self.skipped_count - min(len(self.skipped), limit)} more skipped items")
        return out + self.warnings[:limit]


def parse_time(value: Any) -> dt.datetime:
    """An RFC 3339 text time as an aware UTC datetime; ValueError for anything else (numbers, year 0,
    30 February, overflow)."""
    if not isinstance(value, str):
        raise ValueError(f"not a text time: {value!r}"[:200])
    try:
        when = pystac.utils.str_to_datetime(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        return when.astimezone(dt.timezone.utc)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ValueError(f"unparseable time {value!r}: {exc}"[:300]) from exc


def canonical(when: dt.datetime) -> str:
    # %Y is not zero-padded below year 1000 on glibc ("99-01-01..."): the text must sort as the time does
    return f"{when.year:04d}-" + when.strftime("%m-%dT%H:%M:%S.%fZ")


def item_time(properties: Mapping[str, Any], prop: str = "updated", now: dt.datetime | None = None) -> str:
    """The canonical time that orders an item (see the module docstring): ``updated``, else ``created``,
    else ``datetime``, else ``start_datetime``, else 1970-01-01. Raises ValueError if the time used is
    malformed, or lies after ``now + FUTURE_TOLERANCE`` when `now` is given."""
    value = properties.get(prop)
    name = prop
    if value is None:
        name, value = next(((k, properties[k]) for k in ("created", "datetime", "start_datetime")
                            if properties.get(k) is not None), ("default", None))
    when = parse_time(value) if value is not None else _EPOCH
    if now is not None and when > now + FUTURE_TOLERANCE:
        raise ValueError(f"{name} {value!r} lies in the future (after now + {FUTURE_TOLERANCE}); "
                         "not polled before its time")
    return canonical(when)


def feature_name(data: Any, where: str) -> str:
    """How to name a feature in a report: its id if it has a text one, else where it was found."""
    if isinstance(data, Mapping) and isinstance(data.get("id"), str) and data["id"].strip():
        return repr(data["id"][:120])
    return where


def checked_item(data: Any, where: str, report: SourceReport, *, prop: str = "updated",
                 now: dt.datetime | None = None, context: str = "", href: str | None = None,
                 consume: bool = False) -> tuple[pystac.Item, str] | None:
    """(item, ordering time) of one feature (read from `href`, if a file), or None after recording why
    it was skipped. With `now`, a time after ``now + FUTURE_TOLERANCE`` is refused too. With
    `consume`, the caller gives `data` away and keeps only the item's id, collection and time: the
    item is first built without pystac's two deep copies and its migration (7x faster; a feature that
    fails so gets the full path, which decides and reports)."""
    from stacchip_assets.core.ids import validate_id

    name = feature_name(data, where)
    try:
        if not isinstance(data, Mapping) or data.get("type") != "Feature":
            raise ValueError("not a STAC item (a JSON object of type Feature)")
        if not isinstance(data.get("id"), str):
            raise ValueError("no text id")
        validate_id(data["id"], "item")
        properties = data.get("properties")
        if not isinstance(properties, Mapping):
            raise ValueError("no properties object")
        for key in _TIME_PROPERTIES:
            if properties.get(key) is not None:
                parse_time(properties[key])
        if properties.get("datetime") is None and properties.get("start_datetime") is None:
            raise ValueError("neither datetime nor start_datetime")
        updated = item_time(properties, prop, now)
        item = _light_item(data, href) if consume else None
        if item is None:
            item = pystac.Item.from_dict(dict(data), href=href, migrate=href is not None, preserve_dict=True)
    except (StacchipError, ValueError) as exc:
        report.skip(name, str(exc), context)
        return None
    except Exception as exc:  # pystac raises KeyError, TypeError, STACTypeError ... on malformed features
        report.skip(name, f"malformed item ({type(exc).__name__}: {exc})"[:300], context)
        return None
    return item, updated


def _light_item(data: Mapping[str, Any], href: str | None) -> pystac.Item | None:
    """The item built without copies or migration, else None (use the full path): for callers that
    keep only its id, collection and time (a poll), not the item."""
    try:  # without its links: building them was 40 % of a 10,000-item poll, and a poll never follows them
        return pystac.Item.from_dict(dict(data, links=[]), href=href, migrate=False, preserve_dict=False)
    except Exception:  # noqa: BLE001 - the full path decides, and reports
        return None


class PageGuard:
    """Detects a paging loop: a `next` link followed before, or a page repeating an earlier one."""

    def __init__(self) -> None:
        self.links: set[str] = set()
        self.pages: set[tuple[str, ...]] = set()
        self.count = 0

    def repeated_page(self, page: Mapping[str, Any]) -> str | None:
        """Why `page` must not be read (its items are exactly those of an earlier page), else None."""
        self.count += 1
        features = page.get("features") or []
        ids = tuple(str(f.get("id")) if isinstance(f, Mapping) else repr(f)[:50] for f in features)
        if ids and ids in self.pages:
            return f"page {self.count} repeats the items of an earlier page ({ids[0]} ...)"
        self.pages.add(ids)
        return None

    def looping_next(self, page: Mapping[str, Any]) -> str | None:
        """Why paging must end after `page` (its next link was followed before), else None."""
        links = page.get("links") or []
        link = next((x for x in links if isinstance(x, Mapping) and x.get("rel") == "next"), None) \
            if isinstance(links, list) else None
        if link is None:
            return None
        key = json.dumps([link.get("href"), str(link.get("method", "GET")).upper(), link.get("body")],
                         sort_keys=True, default=str)
        if key in self.links:
            return f"the next link of page {self.count} was followed before ({str(link.get('href'))[:200]})"
        self.links.add(key)
        return None


# --------------------------------------------------------------------------------------------------
# Static catalogs
# --------------------------------------------------------------------------------------------------

def _local_path(href: str) -> str | None:
    if "://" not in href:
        return os.path.abspath(href)
    if href.startswith("file://"):
        return os.path.abspath(urlparse(href).path)
    return None


def read_json(href: str) -> Any:
    """The JSON at `href` (a local path read directly, else through pystac's StacIO)."""
    path = _local_path(href)
    if path is not None:
        with open(path, "rb") as f:
            return json.loads(f.read())
    return json.loads(pystac.StacIO.default().read_text(href))


_read_json = read_json


def absolute_href(href: str, base: str) -> str:
    """`href` made absolute against the file `base` (a plain path join for local paths: pystac's
    make_absolute_href costs 10x more, which counts over 10,000 links)."""
    if "://" not in href and "://" not in base and not href.startswith("/"):
        return os.path.normpath(os.path.join(os.path.dirname(base), href))
    return pystac.utils.make_absolute_href(href, base)


def walk_items(start_href: str, report: SourceReport, *, deadline: float | None = None,
               reached: set[str] | None = None, context: str = "") -> Iterator[tuple[str, Any]]:
    """(href, JSON) of every item linked from the catalog/collection at `start_href` and its children.

    Each link is read on its own: an unreadable item or child is recorded in `report` and skipped; a
    link seen before (a cycle) is followed once. Every href reached is added to `reached`. Past
    `deadline` (time.monotonic) the walk stops with ``report.truncated`` set.
    """
    for href in walk_item_hrefs(start_href, report, deadline=deadline, reached=reached, context=context):
        data = read_item_file(href, report, context)
        if data is not None:
            yield href, data


def read_item_file(href: str, report: SourceReport, context: str = "") -> Any:
    """The JSON of one item file, or None after recording in `report` why it is unreadable."""
    try:
        return _read_json(href)
    except Exception as exc:
        report.skip(href, f"unreadable item file ({type(exc).__name__}: {exc})"[:300], context)
        return None


def walk_item_hrefs(start_href: str, report: SourceReport, *, deadline: float | None = None,
                    reached: set[str] | None = None, context: str = "") -> Iterator[str]:
    """The href of every item linked from the catalog/collection at `start_href` and its children,
    without reading the items (see :func:`walk_items`; a poll reads only changed files)."""
    reached = reached if reached is not None else set()
    stack = [start_href]
    reached.add(_local_path(start_href) or start_href)
    while stack:
        container_href = stack.pop()
        try:
            links = _read_json(container_href).get("links") or []
        except Exception as exc:
            report.skip(container_href, f"unreadable catalog ({type(exc).__name__}: {exc})"[:300], context)
            continue
        for link in links if isinstance(links, list) else []:
            if not isinstance(link, Mapping) or link.get("rel") not in ("item", "child") or not isinstance(link.get("href"), str):
                continue
            href = absolute_href(link["href"], container_href)
            key = _local_path(href) or href
            if key in reached:
                continue
            reached.add(key)
            if link["rel"] == "child":
                stack.append(href)
                continue
            if deadline is not None and time.monotonic() > deadline:
                report.stop(f"{context or start_href}: the time budget ran out while listing the items; "
                            "nothing polled (a partial listing has no order), the cursor stays")
                return
            yield href


def unlinked_item_files(folder: str, reached: set[str], limit: int = 10_000) -> list[tuple[str, str]]:
    """(path, id) of STAC item JSON files under `folder` that no link reached (at most `limit` unreached
    files looked at; os.walk, as rglob costs seconds over 10,000 item folders)."""
    found: list[tuple[str, str]] = []
    looked = 0
    for root, dirs, files in os.walk(os.path.abspath(folder)):
        dirs.sort()
        for name in sorted(files):
            if not name.endswith(".json"):
                continue
            full = os.path.join(root, name)
            if full in reached:
                continue
            looked += 1
            if looked > limit:
                return found
            try:
                with open(full, "rb") as f:
                    data = json.loads(f.read())
            except (OSError, ValueError, UnicodeDecodeError):
                continue
            if isinstance(data, Mapping) and data.get("type") == "Feature":
                found.append((full, str(data.get("id"))[:120]))
    return found


__all__ = ["FUTURE_TOLERANCE", "PageGuard", "SourceReport", "checked_item", "item_time", "parse_time",
           "absolute_href", "read_item_file", "read_json", "unlinked_item_files", "walk_item_hrefs", "walk_items"]
