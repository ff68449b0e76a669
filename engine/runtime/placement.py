"""Where streams sit in the decoder's rows: pure functions over the streams' row blocks, for the scheduler.

Rows come in regions (the live sessions', the predictions'); a stream holds one block of adjacent rows inside its
region from its start to its end, so opening and closing move no cache. Only when a region's free rows are
scattered, or a restyle needs rows its neighbour holds, are blocks packed again (`packing`), by one all-or-nothing
copy in the decoder.
"""

import typing as tp

from engine.runtime.streams import Stream


def free_rows(streams: tp.Sequence[Stream], region: range) -> int:
    return len(region) - sum(s.conditioning.rows for s in streams if s.rows.start in region)


def is_free(streams: tp.Sequence[Stream], start: int, count: int, region: range,
            ignoring: tp.Optional[Stream] = None) -> bool:
    """Whether rows start .. start + count - 1 are in `region` and no stream but `ignoring` holds one."""
    if start + count > region.stop:
        return False
    return all(s is ignoring or s.rows.stop <= start or s.rows.start >= start + count for s in streams)


def free_block(streams: tp.Sequence[Stream], count: int, region: range,
               ignoring: tp.Optional[Stream] = None) -> tp.Optional[int]:
    """The first row of the lowest block of `count` free rows of `region`, or None when they are scattered."""
    return next((start for start in range(region.start, region.stop - count + 1)
                 if is_free(streams, start, count, region, ignoring)), None)


def restyled(total_rows: int, old: slice, sources: list[int], start: int) -> list[int]:
    """The decoder's row mapping (row i takes old row mapping[i]) that moves a restyled stream from `old` to rows
    from `start`: its style rows from its own style rows `sources`, its unconditional row last; others stay."""
    mapping = list(range(total_rows))
    for target, source in enumerate([old.start + i for i in sources] + [old.stop - 1], start=start):
        mapping[target] = source
    return mapping


def packing(streams: tp.Sequence[Stream], placed: tp.Collection[int],
            style_sources: tp.Mapping[int, list[int]]) -> tuple[list[int], list[slice]]:
    """The decoder's row mapping that packs `streams` onto rows 0.. in order, and each stream's new rows. A
    stream not yet `placed` (by id) gets fresh rows (its conditions, prefix and prefill fill them); a placed one
    keeps its rows' contents, except that one in `style_sources` (by id) continues in each new style row the
    style row of its own named there."""
    sources: list[int] = []
    layout: list[slice] = []
    for stream in streams:
        start, old = len(sources), stream.rows
        if id(stream) not in placed:
            sources.extend(range(start, start + stream.conditioning.rows))
        else:  # style rows from the named ones, the unconditional row stays last
            sources.extend(old.start + i for i in style_sources.get(id(stream), range(old.stop - 1 - old.start)))
            sources.append(old.stop - 1)
        layout.append(slice(start, len(sources)))
    return sources, layout
