"""Hypothesis strategies of Loom items: every field the accessors read, of every JSON type, nested or not."""

from __future__ import annotations

from hypothesis import strategies as st

TS_TEXT = st.sampled_from(["2026-03-24T03:18:32.025Z", " 2025-12-06T22:58:25.942000+00:00 ", "2026-11-22T10:48:19",
                           "1700000000", "20260324", "", "not a date", "2026-03-24T03:18:32+05:30"])
"""Timestamps as Loom writes them, as other writers do, and strings that are not timestamps."""
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 2**70), st.floats(allow_nan=True),
                   st.text(max_size=3), TS_TEXT, st.lists(st.integers(), max_size=2),
                   st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))
"""A leaf of any JSON type (integers beyond a double, NaN and infinities included)."""
PARENTS = ("pattern", "metrics", "performance", "evolution", "lifecycle", "problem", "effectiveness", "decision",
           "outcome")
KEYS = ("type", "successRate", "success_rate", "executionCount", "execution_count", "confidenceScore",
        "confidence_score", "confidence", "created", "created_at", "lastUsed", "last_used", "last_used_at",
        "errorType", "error_type", "worked", "wouldRepeat", "would_repeat", "avg_time_saved_ms", "avgTimeSavedMs",
        "timeToFixMinutes", "time_to_fix_minutes", "preventedRecurrence", "prevented_recurrence")
METRIC_KEYS = ("developmentSpeed", "development_speed", "apiPerformance", "api_performance", "clientSatisfaction",
               "client_satisfaction", "maintainability", "customMetrics")
"""The keys of a decision's ``outcome.successMetrics``."""
METRIC_OBJECTS = st.fixed_dictionaries({}, optional={k: st.one_of(st.floats(0, 2), VALUES) for k in METRIC_KEYS})
"""A decision's ``outcome.successMetrics``: named metrics, any subset, mostly numbers, any type."""
METRICS = st.one_of(VALUES, METRIC_OBJECTS)
"""What a ``successMetrics`` key may hold."""
TOP = ("id", "agent", "timestamp", "verifiedCount", "verified_count", "reviewedAt", "reviewed_at", "active")
LOOM_ITEMS = st.builds(
    lambda top, parents: {**top, **parents},
    st.dictionaries(st.sampled_from(TOP), VALUES, max_size=5),
    st.dictionaries(st.sampled_from(PARENTS),
                    st.one_of(VALUES, st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6)), max_size=6),
)
"""A pattern, solution or decision of any shape: top-level fields and parent objects drawn from every reader's
spellings, each of any JSON type."""
_FLAG = st.one_of(st.booleans(), VALUES)
_REPEAT = {"wouldRepeat": _FLAG, "would_repeat": _FLAG}
OUTCOMES = st.one_of(
    st.fixed_dictionaries({"successMetrics": METRIC_OBJECTS}, optional={**_REPEAT, "success_metrics": METRICS}),
    st.fixed_dictionaries({"success_metrics": METRIC_OBJECTS}, optional={**_REPEAT, "successMetrics": METRICS}),
    st.fixed_dictionaries({}, optional={**_REPEAT, "successMetrics": METRICS, "success_metrics": METRICS}),
)
DECISIONS = st.builds(lambda top, outcome: {**top, "outcome": outcome},
                      st.dictionaries(st.sampled_from(TOP), VALUES, max_size=3), st.one_of(OUTCOMES, VALUES))
"""A decision whose ``outcome`` is an object of its fields in any spelling and type (or any value)."""
