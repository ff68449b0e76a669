"""engine.runtime.worker's pause: no job of a worker runs while another thread holds it (CUDA graph capture needs that
of the codec thread), and a paused worker is not reported stalled."""

import threading
import time

from engine.runtime.worker import Worker


def test_a_paused_worker_runs_no_job_until_the_pause_ends():
    worker = Worker("test", stall_seconds=0.2)
    try:
        ran = threading.Event()
        with worker.paused():
            future = worker.call(ran.set)
            time.sleep(0.4)
            assert not ran.is_set()
            assert worker.problem is None  # waiting for the pause is not a stall
        assert future.result(timeout=5) is None and ran.is_set()
    finally:
        worker.close()


def test_a_pause_waits_for_the_running_job():
    worker = Worker("test")
    try:
        started, release, order = threading.Event(), threading.Event(), []

        def job() -> None:
            started.set()
            release.wait(5)
            order.append("job")

        future = worker.call(job)
        started.wait(5)
        threading.Timer(0.2, release.set).start()
        with worker.paused():
            order.append("paused")
        assert order == ["job", "paused"] and future.result(timeout=5) is None
    finally:
        worker.close()
