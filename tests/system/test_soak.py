"""Three minutes of everything a shared deployment meets, against Cog's real server (benchmarks/soak.py)."""

import pytest

from benchmarks.soak import Soak


@pytest.mark.slow
@pytest.mark.timeout(600)  # three minutes of load after Cog's server starts
def test_a_three_minute_soak_leaks_nothing_and_fails_nothing_unexpected():
    report = Soak(minutes=3, warm_up=1).run()
    assert report["unexpected"] == []
    assert report["sessions_leaked"] == 0 and report["rows_leaked"] == 0 and report["health"] == "ready"
    assert report["counts"]["prediction_good"] >= 10 and report["counts"]["churn_freeze"] >= 2
    assert report["counts"]["gary_job"] >= 2 and report["counts"]["lyria_garbage"] >= 10
    assert min(report["listener_chunks"].values()) >= 60  # 1 s chunks at realtime pace for 3 minutes
    assert report["worst_chunk_gap_seconds"] < 4.0  # no stall
    # the floor of minute 3 against minute 2's (30 minutes from minute 2 hold +50 MB: docs/engine.md, "Host
    # memory"); a short soak on a loaded CI machine is noisier
    assert report["rss_growth_after_warm_up_mb"] < 100
