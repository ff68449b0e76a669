"""The seed's browser quick-start client (seed 000) as a schedule: when it plays each `/ws/jam` chunk it receives,
and when a person hears a gap. Its script, verbatim in what matters:

    if (nextTime < ctx.currentTime + 0.05) nextTime = ctx.currentTime + 0.12;
    const startAt = nextTime, dur = audio.duration;
    nextTime = startAt + Math.max(0, dur - XFADE);          // XFADE = 0.025

so the first chunk starts 0.12 s after it arrives, each next one where the previous one's crossfade begins, and a
chunk that arrives later than 50 ms before its slot resets the clock (a gap). The benchmarks and the tests that play
as that client share this one copy of the rule."""

XFADE, REFILL, SLACK = 0.025, 0.12, 0.05  # crossfade, refill delay, lateness that resets the clock (seconds)


class BrowserSchedule:
    def __init__(self) -> None:
        self.next_time = 0.0  # where the next chunk would start (the client's clock: time.monotonic here)
        self.chunks = 0
        self.gaps: list[float] = []  # arrival times of the chunks that reset the clock (after the first)
        self.early: list[float] = []  # per chunk after the first: how long before its lateness mark it came

    def arrive(self, now: float, total_seconds: float) -> tuple[float, bool]:
        """A chunk of `total_seconds` (its audio and its crossfade tail: metadata `total_seconds`) arriving at
        `now`: when it starts playing, and whether it reset the clock (a gap, never the first chunk)."""
        if self.chunks:
            self.early.append(self.next_time - SLACK - now)
        gap = self.next_time < now + SLACK
        if gap:
            if self.chunks:
                self.gaps.append(now)
            self.next_time = now + REFILL
        start = self.next_time
        self.next_time += total_seconds - XFADE
        self.chunks += 1
        return start, gap and self.chunks > 1

    def gaps_between(self, start: float, end: float) -> list[float]:
        return [t for t in self.gaps if start <= t <= end]

