"""index.combined_state: totals and data version of the combined index, without Dagster."""

from stacchip_assets.index import combined_state
from stacchip_assets.index.combined import CombineReport
from stacchip_assets.index.combined_state import UpdateOutcome


def _report(rows_by_item, previous, existed, upserted):
    return CombineReport(upserted=list(upserted), rows_by_item=dict(rows_by_item),
                         previous_rows_by_item=dict(previous), existed_before=set(existed))


def test_initial_state_keeps_the_previous_one_unless_rebuilding():
    previous = {"event_cursor": 7, "items": 2, "rows": 10, "by_collection": {"a": {"items": 2, "rows": 10}},
                "version": "v", "journal": "run1"}
    assert combined_state.initial_state(previous, False) == previous
    assert combined_state.initial_state(previous, True) == {
        "event_cursor": None, "items": 0, "rows": 0, "by_collection": {}, "version": ""}
    assert combined_state.initial_state(None, False)["event_cursor"] is None


def test_totals_follow_new_replaced_and_removed_items():
    state = combined_state.initial_state(None, False)
    combined_state.apply_totals(state, _report({("a", "1"): 5, ("b", "2"): 3}, {}, [], [("a", "1"), ("b", "2")]))
    assert (state["items"], state["rows"]) == (2, 8)
    # a/1 re-indexed with 4 rows, b/2 removed (0 rows now, 3 before), a/3 new with 6
    combined_state.apply_totals(state, _report({("a", "1"): 4, ("b", "2"): 0, ("a", "3"): 6},
                                               {("a", "1"): 5, ("b", "2"): 3}, [("a", "1"), ("b", "2")],
                                               [("a", "1"), ("a", "3")]))
    assert state["by_collection"] == {"a": {"items": 2, "rows": 10}, "b": {"items": 0, "rows": 0}}
    assert (state["items"], state["rows"]) == (2, 10)


class _NoFiles:
    def info(self, key):
        return None

    @staticmethod
    def index_key(collection, item_id):
        return f"index/{collection}/{item_id}"


def test_the_version_rolls_with_changes_and_stays_without():
    state = combined_state.initial_state(None, False)
    report = _report({("a", "1"): 5}, {}, [], [("a", "1")])
    first = combined_state.roll_version(state, UpdateOutcome(report, [("a", "1")], {"a/1": "h1"}), _NoFiles())
    assert len(first) == 64
    assert combined_state.roll_version(state, UpdateOutcome(CombineReport(), []), _NoFiles()) == first
    other = dict(combined_state.initial_state(None, False))
    second = combined_state.roll_version(other, UpdateOutcome(report, [("a", "1")], {"a/1": "h2"}), _NoFiles())
    assert second != first  # another chip-index data version, another combined version
    third = combined_state.roll_version(state, UpdateOutcome(report, [("a", "1")], {"a/1": "h1"}), _NoFiles())
    assert third not in (first, second)  # rolling: the same change again moves the version on
