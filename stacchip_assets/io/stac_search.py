"""Search parameters of a collection, and their client-side evaluation (static catalogs have no
server to search): bbox, datetime, query, CQL2-JSON filter, sortby, and stacchip's item selection
("least cloudy item per tile per quarter"). Split out of :mod:`.stac_source`, which re-exports these
names."""

from __future__ import annotations

import datetime as dt
import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pystac
import shapely

from stacchip_assets.errors import StacSourceError
from stacchip_assets.io.source_guards import SourceReport

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
    def from_mapping(cls, values: Mapping[str, Any] | None) -> SearchParams:
        values = dict(values or {})
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise StacSourceError(f"unknown search parameters {sorted(unknown)}")
        if values.get("bbox") is not None:
            values["bbox"] = tuple(float(v) for v in values["bbox"])
        if values.get("tile_properties") is not None:
            values["tile_properties"] = tuple(values["tile_properties"])
        return cls(**values)


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
    if not params.filter:
        return True
    if isinstance(params.filter, str):  # CQL2 text goes to the server; nothing to match here
        return True
    return _match_cql2(item, params.filter)


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


_CQL2_OPS = {"eq": "=", "neq": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}


def query_as_cql2(query: Mapping[str, Any]) -> dict[str, Any]:
    """The STAC API `query` extension as CQL2-JSON (servers such as pgstac refuse `query` beside a
    CQL2 filter, which polling adds for its cursor)."""
    args: list[dict[str, Any]] = []
    for name, tests in query.items():
        prop = {"property": name.removeprefix("properties.")}
        for op, value in (tests.items() if isinstance(tests, Mapping) else [("eq", tests)]):
            if op in _CQL2_OPS:
                args.append({"op": _CQL2_OPS[op], "args": [prop, value]})
            elif op == "in":
                args.append({"op": "in", "args": [prop, list(value)]})
            elif op == "startsWith":
                args.append({"op": "like", "args": [prop, f"{value}%"]})
            else:
                raise StacSourceError(f"query operator {op!r} cannot be combined with polling (no CQL2 equivalent)")
    return args[0] if len(args) == 1 else {"op": "and", "args": args}


def apply_selection(items: list[pystac.Item], params: SearchParams) -> list[pystac.Item]:
    if params.selection == SELECTION_LEAST_CLOUDY:
        return select_least_cloudy_per_tile_quarter(items, params.tile_properties, params.cloud_property)
    return items


__all__ = [
    "DEFAULT_TILE_PROPERTIES", "SELECTIONS", "SELECTION_ALL", "SELECTION_LEAST_CLOUDY", "SearchParams", "apply_selection",
    "filter_items", "query_as_cql2", "select_least_cloudy_per_tile_quarter", "tile_of",
]
