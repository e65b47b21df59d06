"""The common ground of the STAC sources: the interface, what a poll returns, item times.

Split from :mod:`.stac_source` (which re-exports every name here) to keep modules short.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pystac

from stacchip_assets.errors import InvalidItemError, StacchipError, StacSourceError
from stacchip_assets.io.source_guards import SourceReport, canonical, item_time
from stacchip_assets.io.stac_http import explain as _explain
from stacchip_assets.io.stac_search import SearchParams


@dataclass(frozen=True)
class PolledItem:
    """An item a poll found: enough to request its indexing (no item body kept)."""

    collection: str
    item_id: str
    updated: str  # canonical UTC ISO time, see `canonical_time`

    @property
    def position(self) -> tuple[str, str]:
        return (self.updated, self.item_id)


def canonical_time(value: str | dt.datetime) -> str:
    """A time as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC (sortable as text, stable in run keys)."""
    when = pystac.utils.str_to_datetime(value) if isinstance(value, str) else value
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return canonical(when.astimezone(dt.timezone.utc))


def item_updated(item: pystac.Item, prop: str = "updated") -> str:
    """The item's last-modified time: its ``updated`` property, else ``created``, else its datetime
    (never a file mtime: see :func:`.source_guards.item_time`). A present but malformed time raises
    InvalidItemError naming the item (the item stays malformed: not worth a retry)."""
    try:
        return item_time(item.properties, prop)
    except ValueError as exc:
        raise InvalidItemError(f"malformed metadata: {exc}", item_id=str(item.id)) from exc


# --------------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------------

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

    def get_items(self, collection: str, item_ids: Sequence[str]) -> dict[str, pystac.Item | StacchipError]:
        """Each id's item, or the error :meth:`get_item` raises for it (a batch run indexes the items it
        can): here one `get_item` per id; a STAC API source fetches them with a few searches."""
        found: dict[str, pystac.Item | StacchipError] = {}
        for item_id in item_ids:
            try:
                found[item_id] = self.get_item(collection, item_id)
            except StacchipError as exc:
                found[item_id] = exc
        return found

    def _error(self, what: str, exc: BaseException | str) -> StacSourceError:
        return StacSourceError(f"{self.name}: {what}: {_explain(exc)}")


def _after(items: Iterable[PolledItem], after: tuple[str, str] | None, limit: int) -> list[PolledItem]:
    found = sorted((p for p in items if after is None or p.position > tuple(after)), key=lambda p: p.position)
    return found[: max(int(limit), 0)]


def _not_found(item_id: str, report: SourceReport) -> str:
    """"not found", with the reason if the item was there but skipped as malformed."""
    reasons = [reason for name, reason in report.skipped if name in (repr(item_id), item_id)]
    if reasons:
        return f"the item is malformed: {reasons[0]}"
    return "not found" + (f" ({report.truncated})" if report.truncated else "")
