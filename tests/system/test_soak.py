"""Three minutes of everything a shared deployment meets, against Cog's real server (benchmarks/soak.py)."""

import pytest

from benchmarks.soak import Soak


@pytest.mark.slow
@pytest.mark.timeout(600)  # three minutes of load after Cog's server starts
def test_a_three_minute_soak_leaks_nothing_and_fails_nothing_unexpected():
    report = Soak(minutes=3).run()
    assert report["unexpected"] == []
    assert report["sessions_leaked"] == 0 and report["rows_leaked"] == 0 and report["health"] == "ready"
    assert report["counts"]["prediction_good"] >= 10 and report["counts"]["churn_freeze"] >= 2
    assert report["worst_chunk_gap_seconds"] < 4.0  # 2 s chunks at realtime pace: no stall
    assert report["rss_growth_after_first_minute_mb"] < 100
