"""Where STAC items come from: a STAC API (searched through pystac-client) or a static catalog.

Both kinds answer the same three questions, per collection:

- :meth:`StacSource.search` -- the item set a search selects (bbox, datetime, query, filter, sortby,
  max_items), optionally reduced by stacchip's rule "least cloudy item per tile per quarter";
- :meth:`StacSource.poll` -- items whose ``updated`` time is after a cursor, oldest first, at most
  ``limit`` (what a sensor asks on each tick);
- :meth:`StacSource.get_item` -- one item by id (what indexing an item starts from).

Every failure (server down, bad query, unreadable catalog, a collection the source does not have)
raises :class:`StacSourceError` naming the source, so a Dagster tick or run says which catalog to look
at. A search that selects nothing is no error: an empty list.

API requests are retried on connection errors, timeouts, 429 and 5xx (GET and POST search alike:
searches are idempotent) with exponential backoff, honouring ``Retry-After``, a bounded number of
times (:class:`RetrySettings`). An item an API returns on two pages (it moved while we paged) is
yielded once: its newest version (largest ``updated``; the first seen on a tie), at its first place,
with a warning naming the repeated ids.

Sources are untrusted (see :mod:`.source_guards`): every item of a batch is checked on its own and a
malformed one is skipped and recorded in the `report` (a :class:`SourceReport`) the caller passes, never
failing its neighbours; item times come from the item (``updated``, else ``created`` / ``datetime``),
never from a file's mtime, and never lie after now + ``FUTURE_TOLERANCE``. A STAC API whose paging
loops (a ``next`` link followed before, a page repeating an earlier one) is stopped: :meth:`poll`
keeps what it read (an oldest-first prefix, so a cursor set from it skips nothing) and records why in
``report.truncated``; :meth:`search` and :meth:`get_item` raise :class:`StacSourceError` (an item set
must be complete). :meth:`poll` also takes a `deadline` (``time.monotonic()``), the sensor's tick
budget, checked inside the paging.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import operator
import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence
from urllib.parse import quote, urlparse

import pystac
import shapely

from .errors import StacSourceError
from .paths import validate_id
from .source_guards import (
    FUTURE_TOLERANCE,
    PageGuard,
    SourceReport,
    checked_item,
    item_time,
    unlinked_item_files,
    walk_items,
)

log = logging.getLogger(__name__)

SELECTION_ALL = "all"
SELECTION_LEAST_CLOUDY = "least_cloudy_per_tile_quarter"
SELECTIONS = (SELECTION_ALL, SELECTION_LEAST_CLOUDY)

#: Item properties that name a tile/scene footprint, tried in order by the selection rule.
DEFAULT_TILE_PROPERTIES = (
    "grid:code", "s2:mgrs_tile", "mgrs:tile", "landsat:wrs_path+landsat:wrs_row",
    "modis:tile-id", "sat:relative_orbit",
)


@dataclass(frozen=True)
class SearchParams:
    """How one collection is searched. All fields optional; `max_items` bounds the item set."""

    bbox: tuple[float, float, float, float] | None = None
    datetime: str | None = None
    query: Mapping[str, Any] | None = None
    filter: Mapping[str, Any] | str | None = None  # noqa: A003 (STAC's name)
    filter_lang: str | None = None
    sortby: Sequence[Mapping[str, str]] | str | None = None
    max_items: int | None = None
    selection: str = SELECTION_ALL
    tile_properties: tuple[str, ...] = DEFAULT_TILE_PROPERTIES
    cloud_property: str = "eo:cloud_cover"
    updated_property: str = "updated"

    def __post_init__(self) -> None:
        if self.selection not in SELECTIONS:
            raise StacSourceError(f"unknown item selection {self.selection!r}; choose one of {list(SELECTIONS)}")
        if self.bbox is not None and len(self.bbox) != 4:
            raise StacSourceError(f"bbox must have 4 numbers, got {self.bbox!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> "SearchParams":
        values = dict(values or {})
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise StacSourceError(f"unknown search parameters {sorted(unknown)}")
        if values.get("bbox") is not None:
            values["bbox"] = tuple(float(v) for v in values["bbox"])
        if values.get("tile_properties") is not None:
            values["tile_properties"] = tuple(values["tile_properties"])
        return cls(**values)


@dataclass(frozen=True)
class PolledItem:
    """An item a poll found: enough to request its indexing (no item body kept)."""

    collection: str
    item_id: str
    updated: str  # canonical UTC ISO time, see `canonical_time`

    @property
    def position(self) -> tuple[str, str]:
        return (self.updated, self.item_id)


@dataclass(frozen=True)
class RetrySettings:
    """Retries of STAC API requests: `max_retries` more attempts after the first on connection errors,
    timeouts and the `statuses`; waits of ``backoff_seconds * 2**(n-1)`` (n-th retry), and a server's
    ``Retry-After``, each capped at `max_wait_seconds`."""

    max_retries: int = 3
    backoff_seconds: float = 0.5
    max_wait_seconds: float = 10.0
    statuses: tuple[int, ...] = (429, 500, 502, 503, 504)

    def urllib3_retry(self):
        from urllib3.util.retry import Retry

        cap = float(self.max_wait_seconds)

        class _BoundedRetry(Retry):
            DEFAULT_BACKOFF_MAX = cap

            def get_retry_after(self, response):  # a server's Retry-After, but never longer than the cap
                value = super().get_retry_after(response)
                return None if value is None else min(value, cap)

        n = max(int(self.max_retries), 0)
        return _BoundedRetry(
            total=n, connect=n, read=n, status=n, other=0, redirect=5,
            allowed_methods=frozenset({"GET", "HEAD", "POST"}), status_forcelist=frozenset(self.statuses),
            backoff_factor=float(self.backoff_seconds), backoff_max=cap, respect_retry_after_header=True,
            raise_on_status=False,  # the last answer reaches pystac-client, whose error names the status
        )


def canonical_time(value: str | dt.datetime) -> str:
    """A time as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC (sortable as text, stable in run keys)."""
    when = pystac.utils.str_to_datetime(value) if isinstance(value, str) else value
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def item_updated(item: pystac.Item, prop: str = "updated") -> str:
    """The item's last-modified time: its ``updated`` property, else ``created``, else its datetime
    (never a file mtime: see :func:`.source_guards.item_time`). A present but malformed time raises
    StacSourceError naming the item."""
    try:
        return item_time(item.properties, prop)
    except ValueError as exc:
        raise StacSourceError(f"malformed metadata: {exc}", item_id=str(item.id)) from exc


def _item_time(item: pystac.Item) -> dt.datetime | None:
    when = item.datetime
    if when is None and item.properties.get("start_datetime"):
        when = pystac.utils.str_to_datetime(item.properties["start_datetime"])
    if when is not None and when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when


def tile_of(item: pystac.Item, properties: Sequence[str] = DEFAULT_TILE_PROPERTIES) -> str:
    """The tile an item belongs to: the first of `properties` it has (``a+b`` joins two), else its id."""
    for name in properties:
        parts = name.split("+")
        values = [item.properties.get(p) for p in parts]
        if all(v is not None for v in values):
            return "/".join(str(v) for v in values)
    return f"id:{item.id}"


def select_least_cloudy_per_tile_quarter(
    items: Iterable[pystac.Item],
    tile_properties: Sequence[str] = DEFAULT_TILE_PROPERTIES,
    cloud_property: str = "eo:cloud_cover",
) -> list[pystac.Item]:
    """stacchip's rule: one item per (tile, year, quarter), the least cloudy (ties: earliest, then id).

    Items without a cloud cover count as fully cloudy; items without a date are kept as they are.
    The result keeps the input order.
    """
    best: dict[tuple, tuple[tuple, int]] = {}
    kept_undated: list[int] = []
    items = list(items)
    for i, item in enumerate(items):
        when = _item_time(item)
        if when is None:
            kept_undated.append(i)
            continue
        group = (tile_of(item, tile_properties), when.year, (when.month - 1) // 3 + 1)
        cloud = item.properties.get(cloud_property)
        rank = (float(cloud) if cloud is not None else 100.0, when, item.id)
        if group not in best or rank < best[group][0]:
            best[group] = (rank, i)
    keep = sorted([i for _, i in best.values()] + kept_undated)
    return [items[i] for i in keep]


# --------------------------------------------------------------------------------------------------
# Client-side evaluation of search parameters (static catalogs)
# --------------------------------------------------------------------------------------------------

def _parse_interval(value: str) -> tuple[dt.datetime | None, dt.datetime | None]:
    parts = value.split("/") if "/" in value else [value, value]
    if len(parts) != 2:
        raise StacSourceError(f"bad datetime interval {value!r}")

    def parse(text: str, end: bool) -> dt.datetime | None:
        text = text.strip()
        if text in ("", ".."):
            return None
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            day = dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc)
            return day + dt.timedelta(days=1) - dt.timedelta(microseconds=1) if end else day
        when = pystac.utils.str_to_datetime(text)
        return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)

    return parse(parts[0], False), parse(parts[1], True)


def _prop(item: pystac.Item, name: str) -> Any:
    name = name.removeprefix("properties.")
    if name == "id":
        return item.id
    if name == "collection":
        return item.collection_id
    return item.properties.get(name)


_COMPARE = {
    "eq": operator.eq, "=": operator.eq, "neq": operator.ne, "<>": operator.ne, "!=": operator.ne,
    "lt": operator.lt, "<": operator.lt, "lte": operator.le, "<=": operator.le,
    "gt": operator.gt, ">": operator.gt, "gte": operator.ge, ">=": operator.ge,
}


def _comparable(a: Any, b: Any) -> tuple[Any, Any]:
    """Make times comparable with times (text ISO values are parsed when the other side is a time)."""
    if isinstance(b, dict) and "timestamp" in b:
        b = pystac.utils.str_to_datetime(b["timestamp"])
    if isinstance(b, dict) and "date" in b:
        b = pystac.utils.str_to_datetime(b["date"])
    if isinstance(b, dt.datetime) and isinstance(a, str):
        a = pystac.utils.str_to_datetime(a)
    for x in (a, b):
        if isinstance(x, dt.datetime) and x.tzinfo is None:
            return (a.replace(tzinfo=dt.timezone.utc) if isinstance(a, dt.datetime) and a.tzinfo is None else a,
                    b.replace(tzinfo=dt.timezone.utc) if isinstance(b, dt.datetime) and b.tzinfo is None else b)
    return a, b


def _match_query(item: pystac.Item, query: Mapping[str, Any]) -> bool:
    """The STAC API `query` extension: {"prop": {"op": value, ...}, ...}."""
    for name, tests in query.items():
        value = _prop(item, name)
        if not isinstance(tests, Mapping):
            tests = {"eq": tests}
        for op, expected in tests.items():
            if op == "in":
                if value not in expected:
                    return False
            elif op == "startsWith":
                if not (isinstance(value, str) and value.startswith(expected)):
                    return False
            elif op in _COMPARE:
                if value is None:
                    return False
                try:
                    if not _COMPARE[op](value, expected):
                        return False
                except TypeError:
                    return False
            else:
                raise StacSourceError(f"query operator {op!r} is not supported on static catalogs")
    return True


def _cql2_value(item: pystac.Item, arg: Any) -> Any:
    if isinstance(arg, Mapping) and "property" in arg:
        return _prop(item, arg["property"])
    return arg


def _match_cql2(item: pystac.Item, expr: Mapping[str, Any]) -> bool:
    """A CQL2-JSON subset: and, or, not, =, <>, <, <=, >, >=, in, between, isNull, like."""
    op = str(expr.get("op", "")).lower()
    args = expr.get("args", [])
    if op == "and":
        return all(_match_cql2(item, a) for a in args)
    if op == "or":
        return any(_match_cql2(item, a) for a in args)
    if op == "not":
        return not _match_cql2(item, args[0])
    if op == "isnull":
        return _cql2_value(item, args[0]) is None
    values = [_cql2_value(item, a) for a in args]
    if op in ("=", "<>", "<", "<=", ">", ">="):
        a, b = _comparable(values[0], values[1])
        if a is None or b is None:
            return False
        try:
            return bool(_COMPARE[op](a, b))
        except TypeError:
            return False
    if op == "in":
        return values[0] in values[1]
    if op == "between":
        a, lo = _comparable(values[0], values[1])
        a, hi = _comparable(values[0], values[2])
        return a is not None and lo <= a <= hi
    if op == "like":
        pattern = re.escape(str(values[1])).replace("%", ".*").replace("_", ".")
        return isinstance(values[0], str) and re.fullmatch(pattern, values[0]) is not None
    raise StacSourceError(f"CQL2 operator {op!r} is not supported on static catalogs")


def _sort_key_fields(sortby: Sequence[Mapping[str, str]] | str | None) -> list[tuple[str, bool]]:
    if not sortby:
        return []
    if isinstance(sortby, str):
        fields = [s.strip() for s in sortby.split(",") if s.strip()]
        return [(f.lstrip("+-"), f.startswith("-")) for f in fields]
    return [(s["field"], str(s.get("direction", "asc")).lower() == "desc") for s in sortby]


def _sort_items(items: list[pystac.Item], sortby: Sequence[Mapping[str, str]] | str | None) -> list[pystac.Item]:
    for name, descending in reversed(_sort_key_fields(sortby)):
        # None sorts last in either direction
        present = [i for i in items if _prop(i, name) is not None]
        absent = [i for i in items if _prop(i, name) is None]
        present.sort(key=lambda i: _prop(i, name), reverse=descending)
        items = present + absent
    return items


def _matches(item: pystac.Item, params: SearchParams, box, interval) -> bool:
    if box is not None:
        geom = shapely.geometry.shape(item.geometry) if item.geometry else (shapely.box(*item.bbox) if item.bbox else None)
        if geom is None or not geom.intersects(box):
            return False
    if interval is not None:
        start = item.properties.get("start_datetime")
        end = item.properties.get("end_datetime")
        t0 = pystac.utils.str_to_datetime(start) if start else _item_time(item)
        t1 = pystac.utils.str_to_datetime(end) if end else _item_time(item)
        if t0 is None or (interval[1] is not None and t0 > interval[1]) or (interval[0] is not None and t1 < interval[0]):
            return False
    if params.query and not _match_query(item, params.query):
        return False
    return not (params.filter and not _match_cql2(item, params.filter))


def filter_items(items: Iterable[pystac.Item], params: SearchParams, report: SourceReport | None = None) -> list[pystac.Item]:
    """Apply bbox, datetime, query, filter and sortby client-side (what a STAC API would do). An item
    whose fields cannot be compared (malformed geometry, times, values) is skipped and recorded in
    `report`; sorting puts values of another type than most last."""
    if isinstance(params.filter, str):
        raise StacSourceError("static catalogs support CQL2-JSON filters only, not CQL2 text")
    report = report if report is not None else SourceReport()
    box = shapely.box(*params.bbox) if params.bbox else None
    interval = _parse_interval(params.datetime) if params.datetime else None
    out = []
    for item in items:
        try:
            if _matches(item, params, box, interval):
                out.append(item)
        except StacSourceError:
            raise  # an unsupported operator: the search itself is wrong
        except Exception as exc:  # noqa: BLE001 - an untrusted item's values; isolate it
            report.skip(repr(item.id), f"cannot be matched against the search ({type(exc).__name__}: {exc})"[:300])
    try:
        return _sort_items(out, params.sortby)
    except TypeError as exc:  # values of mixed types in a sort field
        report.warn(f"sortby could not order the items ({exc}); kept the catalog order")
        return out


def apply_selection(items: list[pystac.Item], params: SearchParams) -> list[pystac.Item]:
    if params.selection == SELECTION_LEAST_CLOUDY:
        return select_least_cloudy_per_tile_quarter(items, params.tile_properties, params.cloud_property)
    return items


# --------------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------------

def _explain(exc: BaseException | str) -> str:
    """The cause of a failed STAC request, with what it means first (unreachable, timed out, HTTP status)."""
    if isinstance(exc, str):
        return exc
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    try:
        import requests
    except ImportError:  # pragma: no cover - pystac-client depends on requests
        return str(exc)
    if any(isinstance(e, requests.Timeout) for e in chain):
        return f"the server did not answer in time ({exc})"
    if any(isinstance(e, requests.ConnectionError) for e in chain):
        return f"the server is not reachable (connection refused or dropped; is it running?): {exc}"
    status = next((getattr(e, "status_code", None) for e in chain if getattr(e, "status_code", None)), None)
    if status:
        return f"the server answered HTTP {status}: {exc}"
    return str(exc)


class StacSource:
    """Common interface of the STAC API and static catalog sources."""

    #: Human-readable description used in errors and metadata.
    name: str = "STAC source"

    def search(self, collection: str, params: SearchParams | None = None, *,
               report: SourceReport | None = None) -> list[pystac.Item]:
        """The items the search selects; malformed ones are skipped into `report`."""
        raise NotImplementedError

    def poll(
        self,
        collection: str,
        params: SearchParams | None = None,
        after: tuple[str, str] | None = None,
        limit: int = 100,
        *,
        report: SourceReport | None = None,
        deadline: float | None = None,
    ) -> list[PolledItem]:
        """Items with (updated, id) after `after`, oldest first, at most `limit`; each time validated and
        no later than now + FUTURE_TOLERANCE. Malformed items, a paging loop and a `deadline`
        (time.monotonic) that passed are recorded in `report`; what is returned is always an
        oldest-first prefix, so a cursor set to its last position skips nothing."""
        raise NotImplementedError

    def get_item(self, collection: str, item_id: str) -> pystac.Item:
        raise NotImplementedError

    def _error(self, what: str, exc: BaseException | str) -> StacSourceError:
        return StacSourceError(f"{self.name}: {what}: {_explain(exc)}")


def _after(items: Iterable[PolledItem], after: tuple[str, str] | None, limit: int) -> list[PolledItem]:
    found = sorted((p for p in items if after is None or p.position > tuple(after)), key=lambda p: p.position)
    return found[: max(int(limit), 0)]


class StaticCatalogSource(StacSource):
    """A static STAC catalog (local path or URL of catalog.json), walked on every call so edits are
    seen. An item's time is its `updated` property, else `created`, else its datetime (never the JSON
    file's mtime: see :mod:`.source_guards`)."""

    def __init__(self, catalog_path: str | os.PathLike) -> None:
        self.catalog_path = str(catalog_path)
        self.name = f"static catalog {self.catalog_path}"

    def _catalog(self) -> pystac.Catalog:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return pystac.Catalog.from_file(self.catalog_path)
        except Exception as exc:  # pystac raises many kinds (OSError, JSON, STACTypeError, urllib)
            raise self._error("cannot open the catalog", exc) from exc

    def _container(self, collection: str) -> tuple[pystac.Catalog, bool]:
        """The child catalog/collection with that id (True), else the root catalog (False)."""
        catalog = self._catalog()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                child = catalog.get_child(collection) or catalog.get_child(collection, recursive=True)
        except Exception as exc:
            raise self._error(f"cannot read the items of collection {collection!r}", exc) from exc
        return (child, True) if child is not None else (catalog, False)

    def _collection_items(self, collection: str, report: SourceReport, *, prop: str = "updated",
                          now: dt.datetime | None = None, deadline: float | None = None,
                          ) -> Iterator[tuple[pystac.Item, str]]:
        """(item, ordering time) of one collection: the items linked from the child catalog/collection
        with that id, else every item of the catalog whose `collection` field names it. Each item is
        read and checked on its own (a malformed one is skipped into `report`); item JSON files under a
        local collection's folder that no link reaches are reported by name, not picked up."""
        container, is_child = self._container(collection)
        start = container.get_self_href() or self.catalog_path
        reached: set[str] = set()
        found = False
        context = f"{self.name}, collection {collection!r}"
        for href, data in walk_items(start, report, deadline=deadline, reached=reached, context=context):
            checked = checked_item(data, href, report, prop=prop, now=now, context=context, href=href)
            if checked is None:
                continue
            item, updated = checked
            if item.collection_id is None and is_child:
                item.collection_id = collection
            if item.collection_id == collection:
                found = True
                yield item, updated
        if not is_child and not found and not report.skipped_count:
            raise self._error(f"collection {collection!r}", "the catalog has no such collection "
                              "(no child catalog of that id and no item naming it)")
        folder = os.path.dirname(start) if is_child and "://" not in start else None
        if folder and report.truncated is None:
            for path, item_id in unlinked_item_files(folder, reached):
                report.warn(f"{context}: item file {path} (id {item_id!r}) is linked from no catalog or "
                            "collection: not read (add an item link to pick it up)")

    def search(self, collection: str, params: SearchParams | None = None, *,
               report: SourceReport | None = None) -> list[pystac.Item]:
        params = params or SearchParams()
        report = report if report is not None else SourceReport()
        found = [i for i, _ in self._collection_items(collection, report, prop=params.updated_property,
                                                       now=dt.datetime.now(dt.timezone.utc))]
        items = apply_selection(filter_items(found, params, report), params)
        return items[: params.max_items] if params.max_items else items

    def poll(self, collection, params=None, after=None, limit=100, *, report=None, deadline=None):
        """See :meth:`StacSource.poll`. The whole catalog is listed (a static catalog has no order); if
        the `deadline` passes before the listing is complete, nothing is returned (a partial listing is
        not an oldest-first prefix) and ``report.truncated`` says so: the cursor stays."""
        params = params or SearchParams()
        report = report if report is not None else SourceReport()
        listed = list(self._collection_items(collection, report, prop=params.updated_property,
                                             now=dt.datetime.now(dt.timezone.utc), deadline=deadline))
        if report.truncated is not None:
            return []
        times = {id(i): t for i, t in listed}
        items = filter_items([i for i, _ in listed], params, report)
        if params.selection != SELECTION_ALL:
            items = apply_selection(items, params)
            items = items[: params.max_items] if params.max_items else items
        return _after((PolledItem(collection, i.id, times[id(i)]) for i in items), after, limit)

    def get_item(self, collection: str, item_id: str) -> pystac.Item:
        validate_id(item_id, "item")
        root = Path(self.catalog_path).parent if "://" not in self.catalog_path else None
        if root is not None:  # best-practices layout first: {collection}/{item_id}/{item_id}.json
            guess = root / validate_id(collection, "collection") / item_id / f"{item_id}.json"
            report = SourceReport()
            if guess.is_file():
                try:
                    data = json.loads(guess.read_text())
                except (OSError, ValueError) as exc:
                    raise self._error(f"cannot read item {item_id!r}", exc) from exc
                checked = checked_item(data, str(guess), report, href=str(guess.absolute()))
                if checked is None:
                    raise self._error(f"item {item_id!r}", _not_found(item_id, report))
                item = checked[0]
                if item.id == item_id and item.collection_id in (collection, None):
                    item.collection_id = collection
                    return item
        report = SourceReport()
        for item, _ in self._collection_items(collection, report):
            if item.id == item_id:
                return item
        raise self._error(f"no item {item_id!r} in collection {collection!r}", _not_found(item_id, report))


def _not_found(item_id: str, report: SourceReport) -> str:
    """"not found", with the reason if the item was there but skipped as malformed."""
    reasons = [reason for name, reason in report.skipped if name in (repr(item_id), item_id)]
    if reasons:
        return f"the item is malformed: {reasons[0]}"
    return "not found" + (f" ({report.truncated})" if report.truncated else "")


class StacApiSource(StacSource):
    """A STAC API searched through pystac-client (paging with the API's next links)."""

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        page_size: int = 100,
        timeout: float = 30.0,
        retry: RetrySettings | None = None,
    ) -> None:
        self.url = url
        self.headers = dict(headers or {})
        self.page_size = int(page_size)
        self.timeout = timeout
        self.retry = retry if retry is not None else RetrySettings()
        self.name = f"STAC API {url}"
        self._client = None

    def client(self):
        if self._client is None:
            import pystac_client
            from pystac_client.stac_api_io import StacApiIO

            try:
                stac_io = StacApiIO(headers=self.headers, timeout=self.timeout, max_retries=self.retry.urllib3_retry())
                client = pystac_client.Client.open(self.url, stac_io=stac_io, timeout=self.timeout)
                self._stac_io = stac_io
            except Exception as exc:
                raise self._error("cannot open the API", exc) from exc
            # Servers often advertise sort/filter/query conformance under other URIs than pystac-client expects.
            for conformance in ("ITEM_SEARCH", "SORT", "FILTER", "QUERY"):
                try:
                    client.add_conforms_to(conformance)
                except Exception:  # pragma: no cover - older pystac-client
                    pass
            self._client = client
        return self._client

    def _search(self, collection: str, params: SearchParams, report: SourceReport, *,
                extra_filter: Mapping[str, Any] | None = None, sortby: Any = None, ids: Sequence[str] | None = None,
                now: dt.datetime | None = None, deadline: float | None = None, on_loop: str = "raise",
                ) -> Iterator[tuple[pystac.Item, str]]:
        """(item, ordering time) of each valid feature of the search's pages; a malformed feature is
        skipped into `report`. A paging loop raises StacSourceError (``on_loop="raise"``) or ends the
        walk with ``report.truncated`` set (``"stop"``); so does a passed `deadline` (always "stop")."""
        filter_ = params.filter
        filter_lang = params.filter_lang
        if extra_filter is not None:
            if isinstance(filter_, str):
                raise self._error("polling", "combine a CQL2-JSON filter with polling, not CQL2 text")
            filter_ = {"op": "and", "args": [filter_, extra_filter]} if filter_ else extra_filter
            filter_lang = "cql2-json"
        kwargs: dict[str, Any] = {
            "collections": [collection], "bbox": params.bbox, "datetime": params.datetime, "query": params.query,
            "filter": filter_, "filter_lang": filter_lang, "sortby": sortby if sortby is not None else params.sortby,
            "limit": self.page_size, "ids": ids,
        }  # max_items is counted by the caller, on distinct items (a repeated item is no new one)
        kwargs = {k: v for k, v in kwargs.items() if v not in (None, [], {})}
        context = f"{self.name}, collection {collection!r}"
        guard = PageGuard()
        try:
            for page in self.client().search(**kwargs).pages_as_dicts():
                stop = guard.repeated_page(page)
                features = (page.get("features") or []) if stop is None else []
                for n, feature in enumerate(features if isinstance(features, list) else []):
                    checked = checked_item(feature, f"feature {n + 1} of page {guard.count}", report,
                                           prop=params.updated_property, now=now, context=context)
                    if checked is not None:
                        if checked[0].collection_id is None:
                            checked[0].collection_id = collection
                        yield checked
                stop = stop or guard.looping_next(page)
                if stop is None and deadline is not None and time.monotonic() > deadline:
                    report.stop(f"{context}: the tick's time budget ran out after page {guard.count}; "
                                "the rest is read on the next tick")
                    return
                if stop is not None:
                    stop = f"{context}: paging loops: {stop}; stopped after {guard.count} pages"
                    if on_loop == "raise":
                        raise StacSourceError(stop)
                    report.stop(stop + " (kept what was read)")
                    return
        except StacSourceError:
            raise
        except Exception as exc:
            raise self._error(f"search of collection {collection!r} failed", exc) from exc

    def _distinct(self, collection: str, items: Iterable[tuple[pystac.Item, str]], max_items: int | None) -> list[pystac.Item]:
        """`items` with each id once (its newest version at its first place), at most `max_items`."""
        kept: dict[str, tuple[pystac.Item, str]] = {}
        repeated: list[str] = []
        for item, updated in items:
            seen = kept.get(item.id)
            if seen is None:
                if max_items is not None and len(kept) >= max_items:
                    break
                kept[item.id] = (item, updated)
                continue
            if item.id not in repeated:
                repeated.append(item.id)
            if updated > seen[1]:
                kept[item.id] = (item, updated)
        if repeated:
            log.warning("%s: the search of collection %r returned %d items more than once (kept the newest "
                        "version of each): %s", self.name, collection, len(repeated), ", ".join(repeated[:50])
                        + (" ..." if len(repeated) > 50 else ""))
        return [item for item, _ in kept.values()]

    def _check_collection(self, collection: str) -> None:
        """Raise StacSourceError if the API has no such collection (asked only when a search found nothing)."""
        from pystac_client.exceptions import APIError

        self.client()
        try:
            self._stac_io.read_json(f"{self.url.rstrip('/')}/collections/{quote(collection, safe='')}")
        except APIError as exc:
            if getattr(exc, "status_code", None) == 404:
                raise self._error(f"collection {collection!r}", "the API has no such collection (HTTP 404)") from exc
            raise self._error(f"cannot look up collection {collection!r}", exc) from exc
        except Exception as exc:
            raise self._error(f"cannot look up collection {collection!r}", exc) from exc

    def search(self, collection: str, params: SearchParams | None = None, *,
               report: SourceReport | None = None) -> list[pystac.Item]:
        params = params or SearchParams()
        report = report if report is not None else SourceReport()
        now = dt.datetime.now(dt.timezone.utc)
        items = self._distinct(collection, self._search(collection, params, report, now=now), params.max_items)
        if not items and not report.skipped_count:
            self._check_collection(collection)  # nothing selected, or a collection the API does not have
        if params.selection == SELECTION_ALL:
            return items
        return apply_selection(items, params)

    def poll(self, collection, params=None, after=None, limit=100, *, report=None, deadline=None):
        """See :meth:`StacSource.poll`: sorted by (updated, id) on the server, from the cursor's second.
        A paging loop or the `deadline` ends the walk keeping what was read (an oldest-first prefix)."""
        params = params or SearchParams()
        report = report if report is not None else SourceReport()
        now = dt.datetime.now(dt.timezone.utc)
        if params.selection != SELECTION_ALL:
            found_items = self._distinct(collection, self._search(collection, params, report, now=now, deadline=deadline,
                                                                  on_loop="stop"), params.max_items)
            items = apply_selection(found_items, params)
            return _after((PolledItem(collection, i.id, item_time(i.properties, params.updated_property))
                           for i in items), after, limit)
        prop = params.updated_property
        extra = None
        if after is not None:
            # Compared as text from the cursor's whole second: servers such as pgstac store unknown
            # properties as text (a timestamp literal fails there), and RFC 3339 UTC times sort as text.
            extra = {"op": ">=", "args": [{"property": prop}, after[0][:19]]}
        sortby = [{"field": f"properties.{prop}", "direction": "asc"}, {"field": "id", "direction": "asc"}]
        found: dict[str, PolledItem] = {}
        repeated: list[str] = []
        # Items sharing the cursor's timestamp come back again (>=): skip them, so fetch a little more.
        for item, updated in self._search(collection, params, report, extra_filter=extra, sortby=sortby, now=now,
                                          deadline=deadline, on_loop="stop"):
            polled = PolledItem(collection, item.id, updated)
            if after is not None and polled.position <= tuple(after):
                continue
            seen = found.get(item.id)
            if seen is not None:  # on two pages: one run, for the newest version
                if item.id not in repeated:
                    repeated.append(item.id)
                if polled.position > seen.position:
                    found[item.id] = polled
                continue
            found[item.id] = polled
            if len(found) >= limit:
                break  # a newer version of one of these on a later page is found by the next poll
        if repeated:
            log.warning("%s: polling collection %r returned %d items more than once (kept the newest version "
                        "of each): %s", self.name, collection, len(repeated), ", ".join(repeated[:50]))
        if not found and after is None and not report:
            self._check_collection(collection)
        return _after(found.values(), after, limit)

    def get_item(self, collection: str, item_id: str) -> pystac.Item:
        validate_id(item_id, "item")
        report = SourceReport()
        for item, _ in self._search(collection, SearchParams(), report, ids=[item_id]):
            if item.id == item_id:
                return item
        raise self._error(f"no item {item_id!r} in collection {collection!r}", _not_found(item_id, report))


def open_source(api_url: str | None = None, catalog_path: str | os.PathLike | None = None, **api_options) -> StacSource:
    """A STAC API source if `api_url` is given, else a static catalog (default: the sample catalog)."""
    if api_url and catalog_path:
        raise StacSourceError("give a STAC API url or a static catalog path, not both")
    if api_url:
        return StacApiSource(api_url, **api_options)
    if not catalog_path:
        from .sample_data import ensure_sample_catalog

        catalog_path = ensure_sample_catalog()
    return StaticCatalogSource(catalog_path)


def item_summary(item: pystac.Item) -> dict[str, Any]:
    """A few fields of an item for tables and metadata."""
    when = _item_time(item)
    return {
        "id": item.id,
        "datetime": when.isoformat() if when else None,
        "cloud_cover": item.properties.get("eo:cloud_cover"),
        "updated": item_updated(item),
        "tile": tile_of(item),
    }


def params_json(params: SearchParams) -> str:
    """SearchParams as JSON (for metadata)."""
    return json.dumps({k: v for k, v in params.__dict__.items() if v not in (None, (), [], {})}, default=list, sort_keys=True)


__all__ = [
    "SELECTIONS", "SELECTION_ALL", "SELECTION_LEAST_CLOUDY", "PolledItem", "RetrySettings", "SearchParams", "StacApiSource",
    "StacSource", "StaticCatalogSource", "apply_selection", "canonical_time", "filter_items", "item_summary",
    "item_updated", "open_source", "params_json", "select_least_cloudy_per_tile_quarter", "tile_of",
]
