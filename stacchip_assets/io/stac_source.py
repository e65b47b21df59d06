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
import os
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pystac

from stacchip_assets.core.ids import validate_id
from stacchip_assets.errors import StacchipError, StacSourceError
from stacchip_assets.io.catalog_index import FileOutcome, index_for, indexed_items
from stacchip_assets.io.source_base import (
    PolledItem,
    StacSource,
    _after,
    _not_found,
    canonical_time,
    item_updated,
)
from stacchip_assets.io.source_guards import (
    PageGuard,
    SourceReport,
    absolute_href,
    checked_item,
    item_time,
    read_item_file,
    read_json,
    unlinked_item_files,
    walk_item_hrefs,
    walk_items,
)
from stacchip_assets.io.stac_http import RetrySettings
from stacchip_assets.io.stac_search import (
    DEFAULT_TILE_PROPERTIES,
    SELECTION_ALL,
    SELECTION_LEAST_CLOUDY,
    SELECTIONS,
    SearchParams,
    _item_time,
    apply_selection,
    filter_items,
    query_as_cql2,
    select_least_cloudy_per_tile_quarter,
    tile_of,
)

log = logging.getLogger(__name__)

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

    def _container_href(self, collection: str) -> tuple[str, bool]:
        """(href of the child catalog/collection with that id, True), else (the root's href, False): as
        :meth:`_container`, on the JSON alone (pystac would build a Link per item of a 10k-item collection)."""
        root = self.catalog_path if "://" in self.catalog_path else os.path.abspath(self.catalog_path)
        try:
            queue, seen = [root], {root}
            links = read_json(root).get("links") or []
        except Exception as exc:
            raise self._error("cannot open the catalog", exc) from exc
        try:
            while queue:
                href = queue.pop(0)
                data = read_json(href) if href != root else {"links": links}
                if href != root and data.get("id") == collection:
                    return href, True
                for link in data.get("links") or []:
                    if isinstance(link, dict) and link.get("rel") == "child" and isinstance(link.get("href"), str):
                        child = absolute_href(link["href"], href)
                        if child not in seen:
                            seen.add(child)
                            queue.append(child)
        except Exception as exc:
            raise self._error(f"cannot read the items of collection {collection!r}", exc) from exc
        return root, False

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
        self._finish_walk(collection, start, is_child, found, reached, report)

    def _finish_walk(self, collection: str, start: str, is_child: bool, found: bool, reached: set[str],
                     report: SourceReport) -> None:
        """After a walk: no such collection is an error; unlinked item files are reported."""
        if not is_child and not found and not report.skipped_count:
            raise self._error(f"collection {collection!r}", "the catalog has no such collection "
                              "(no child catalog of that id and no item naming it)")
        folder = os.path.dirname(start) if is_child and "://" not in start else None
        if folder and report.truncated is None:
            for path, item_id in unlinked_item_files(folder, reached):
                report.warn(f"{self.name}, collection {collection!r}: item file {path} (id {item_id!r}) is "
                            "linked from no catalog or collection: not read (add an item link to pick it up)")

    def _collection_entries(self, collection: str, report: SourceReport, *, prop: str, now: dt.datetime,
                            deadline: float | None) -> list[tuple[str, FileOutcome]]:
        """(href, outcome) of the collection's valid items, as :meth:`_collection_items` finds them, but
        reading only the item files that are new or changed since the last poll (:mod:`.catalog_index`)."""
        start, is_child = self._container_href(collection)
        reached: set[str] = set()
        context = f"{self.name}, collection {collection!r}"
        hrefs = walk_item_hrefs(start, report, deadline=deadline, reached=reached, context=context)
        entries = [(href, outcome) for href, outcome in indexed_items(
            index_for(f"{self.catalog_path}#{collection}"), hrefs, report, prop=prop, now=now, context=context)
            if (outcome.collection_id or (collection if is_child else None)) == collection]
        self._finish_walk(collection, start, is_child, bool(entries), reached, report)
        return entries

    def search(self, collection: str, params: SearchParams | None = None, *,
               report: SourceReport | None = None) -> list[pystac.Item]:
        params = params or SearchParams()
        report = report if report is not None else SourceReport()
        found = [i for i, _ in self._collection_items(collection, report, prop=params.updated_property,
                                                       now=dt.datetime.now(dt.timezone.utc))]
        items = apply_selection(filter_items(found, params, report), params)
        return items[: params.max_items] if params.max_items else items

    def poll(self, collection, params=None, after=None, limit=100, *, report=None, deadline=None):
        """See :meth:`StacSource.poll`. The whole catalog is listed (a static catalog has no order), but
        only new or changed item files are read (the file index of :mod:`.catalog_index`); with a
        bbox/datetime/query/filter, only the items after the cursor are read in full to be matched. If
        the `deadline` passes before the listing is complete, nothing is returned (a partial listing is
        not an oldest-first prefix) and ``report.truncated`` says so: the cursor stays."""
        params = params or SearchParams()
        report = report if report is not None else SourceReport()
        now = dt.datetime.now(dt.timezone.utc)
        prop = params.updated_property
        if params.selection != SELECTION_ALL:  # a selection ranks the whole item set: read it all
            listed = list(self._collection_items(collection, report, prop=prop, now=now, deadline=deadline))
            if report.truncated is not None:
                return []
            times = {id(i): t for i, t in listed}
            items = apply_selection(filter_items([i for i, _ in listed], params, report), params)
            items = items[: params.max_items] if params.max_items else items
            return _after((PolledItem(collection, i.id, times[id(i)]) for i in items), after, limit)
        entries = self._collection_entries(collection, report, prop=prop, now=now, deadline=deadline)
        if report.truncated is not None:
            return []
        fresh = [(h, o) for h, o in entries if after is None or (o.updated, o.item_id) > tuple(after)]
        if not any(v not in (None, (), [], {}) for v in (params.bbox, params.datetime, params.query, params.filter)):
            return _after((PolledItem(collection, o.item_id, o.updated) for _, o in fresh), after, limit)
        context = f"{self.name}, collection {collection!r}"
        checked = [c for c in (checked_item(d, h, report, prop=prop, now=now, context=context, href=h)
                               for h, d in ((h, read_item_file(h, report, context)) for h, _ in fresh)
                               if d is not None) if c is not None]
        times = {id(i): t for i, t in checked}
        items = filter_items([i for i, _ in checked], params, report)
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
                consume: bool = False) -> Iterator[tuple[pystac.Item, str]]:
        """(item, ordering time) of each valid feature of the search's pages; a malformed feature is
        skipped into `report`. A paging loop raises StacSourceError (``on_loop="raise"``) or ends the
        walk with ``report.truncated`` set (``"stop"``); so does a passed `deadline` (always "stop")."""
        filter_ = params.filter
        filter_lang = params.filter_lang
        query = params.query
        if extra_filter is not None:
            if isinstance(filter_, str):
                raise self._error("polling", "combine a CQL2-JSON filter with polling, not CQL2 text")
            if query:  # pgstac refuses `query` beside a CQL2 filter: the same conditions in CQL2
                extra_filter, query = {"op": "and", "args": [query_as_cql2(query), extra_filter]}, None
            filter_ = {"op": "and", "args": [filter_, extra_filter]} if filter_ else extra_filter
            filter_lang = "cql2-json"
        kwargs: dict[str, Any] = {
            "collections": [collection], "bbox": params.bbox, "datetime": params.datetime, "query": query,
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
                                           prop=params.updated_property, now=now, context=context, consume=consume)
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
                                          deadline=deadline, on_loop="stop", consume=True):
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

    def get_items(self, collection: str, item_ids: Sequence[str]) -> dict[str, pystac.Item | StacchipError]:
        """A batch run's items by one search per `page_size` ids; a missing id gets get_item's error."""
        found: dict[str, pystac.Item | StacchipError] = {}
        ids = list(dict.fromkeys(item_ids))  # sent in the search body; only items with a requested id are kept
        for start in range(0, len(ids), self.page_size):
            chunk, report = ids[start:start + self.page_size], SourceReport()
            missing = set(chunk)
            try:
                for item, _ in self._search(collection, SearchParams(), report, ids=chunk):
                    if item.id in missing:
                        found[item.id] = item
                        missing.discard(item.id)
                    if not missing:
                        break  # not the (empty) next page of a full one
            except StacchipError as exc:
                found.update(dict.fromkeys(missing, exc))
                continue
            found.update({i: self._error(f"no item {i!r} in collection {collection!r}", _not_found(i, report)) for i in missing})
        return found


def open_source(api_url: str | None = None, catalog_path: str | os.PathLike | None = None, **api_options) -> StacSource:
    """A STAC API source if `api_url` is given, else the static catalog at `catalog_path`."""
    if api_url and catalog_path:
        raise StacSourceError("give a STAC API url or a static catalog path, not both")
    if api_url:
        return StacApiSource(api_url, **api_options)
    if not catalog_path:
        raise StacSourceError("no STAC source: give a STAC API url or a static catalog path")
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
    "DEFAULT_TILE_PROPERTIES", "SourceReport", "SELECTIONS", "SELECTION_ALL", "SELECTION_LEAST_CLOUDY", "PolledItem", "RetrySettings", "SearchParams", "StacApiSource",
    "StacSource", "StaticCatalogSource", "apply_selection", "canonical_time", "filter_items", "item_summary",
    "item_updated", "open_source", "params_json", "select_least_cloudy_per_tile_quarter", "tile_of",
]
