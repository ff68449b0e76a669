"""Live changes on the engine: where an update lands (A/B against an unchanged session of the same seed), that
seeded sessions stay reproducible to the sample, and style glides."""

import threading
from dataclasses import replace

import pytest
import torch

from engine.runtime.streams import SamplingParams
from engine.work.session import SessionSettings
from engine.work.steering import Ramp, kept_rows, place, union_blend
from tests.support.sessions import first_difference

SETTINGS = SessionSettings(styles=("jazz",), weights=(1.0,), params=SamplingParams(temperature=1.0, top_k=40),
                       chunk_seconds=0.48)
METAL = replace(SETTINGS, styles=("metal",))
HOP = 640  # the demo codec: 32 kHz at 50 frames per second
LOOKAHEAD, MAX_DELAY = 4, 3  # frames: the streaming codec's lookahead, the delay pattern's largest delay


def new_audio(chunks) -> torch.Tensor:
    return torch.cat([c.audio[:, : int(round(c.seconds * c.sample_rate))] for c in chunks], dim=-1)


def play(engine, count: int, changes: dict, seed: int = 5, neighbour: bool = False):
    """`count` chunks of a session (beside a second session stepping in the same forwards, with `neighbour`);
    `changes[i]` is applied before chunk i is asked for. Returns the chunks and the placements."""
    session = engine.open_session(SETTINGS, seed=seed)
    other = engine.open_session(replace(SETTINGS, styles=("dub", "funk"), weights=(1.0, 1.0)), seed=9) \
        if neighbour else None
    chunks, placements = [], []
    try:
        for index in range(count):
            if index in changes:
                placements.append(session.update(changes[index]).result(timeout=60))
            gate = threading.Event()  # both requests reach the LM thread before a step: the same forwards each run
            engine.lm_worker.call(gate.wait)
            mine = session.next_chunk()
            theirs = other.next_chunk() if other is not None else None
            gate.set()
            chunks.append(mine.result(timeout=60))
            if theirs is not None:
                theirs.result(timeout=60)
    finally:
        session.close()
        if other is not None:
            other.close()
    return chunks, placements


def test_an_update_is_heard_from_the_place_it_reports(engine):
    """A/B with the same seed: the streams are equal to the sample until the reported place, and part within the
    frames the delay pattern and the codec's lookahead take (not a chunk later)."""
    reference, _ = play(engine, 5, {})
    changed, [placement] = play(engine, 5, {2: METAL})
    first = first_difference(new_audio(reference), new_audio(changed))
    reported = int(round(placement.stream_seconds * 32000))
    assert placement.chunk == 2 and placement.offset_seconds < 0.1  # just past the frames made for chunk 1
    assert reported <= first <= reported + (LOOKAHEAD + MAX_DELAY + 1) * HOP, (reported, first)
    assert changed[2].settings == SETTINGS and [c.styles for _, c in changed[2].changes] == [("metal",)]
    assert changed[2].changes[0][0] == pytest.approx(placement.offset_seconds)
    assert changed[3].settings == METAL and not changed[3].changes


def test_same_seed_and_same_changes_give_the_same_audio_alone_and_beside_another_session(engine):
    changes = {1: METAL, 3: replace(METAL, styles=("metal", "ambient"), weights=(1.0, 0.5))}
    for neighbour in (False, True):
        (a, pa), (b, pb) = play(engine, 5, changes, neighbour=neighbour), play(engine, 5, changes, neighbour=neighbour)
        assert pa == pb
        assert torch.equal(new_audio(a), new_audio(b))
        assert all(torch.equal(x.frames, y.frames) for x, y in zip(a, b, strict=True))


def test_a_style_ramp_glides_and_gives_the_old_rows_back(engine):
    ramp = replace(METAL, ramp_seconds=0.4)  # 20 steps
    instant, _ = play(engine, 4, {1: METAL})
    session = engine.open_session(SETTINGS, seed=5)
    try:
        session.next_chunk().result(timeout=60)
        placement = session.update(ramp).result(timeout=60)
        assert placement.ramp_seconds == 0.4
        assert engine.rows_in_use == 3  # jazz and metal blended while gliding, plus the unconditional row
        glided = [session.next_chunk().result(timeout=60) for _ in range(3)]
        assert engine.lm_worker.call(lambda: session.stream.conditioning.texts).result(timeout=10) == ["metal"]
        assert engine.rows_in_use == 2  # jazz's row given back once the glide ended
    finally:
        session.close()
    assert not torch.equal(new_audio(instant[1:]), new_audio(glided))


def test_ramp_weights_move_every_step_and_end_on_the_target():
    texts, start, end = union_blend(["jazz", "dub"], [0.5, 0.5], ["dub", "metal"], [0.25, 0.75])
    assert texts == ["jazz", "dub", "metal"] and start == [0.5, 0.5, 0.0] and end == [0.0, 0.25, 0.75]
    ramp = Ramp(start, end, steps=4)
    seen = []
    while not ramp.finished:
        seen.append(ramp.weights)
        ramp.done += 1
    assert seen[0] == pytest.approx([0.375, 0.4375, 0.1875]) and seen[-1] == pytest.approx(end)
    assert all(sum(w) == pytest.approx(1.0) for w in seen)
    assert kept_rows(texts, end) == [1, 2]


def test_a_landing_past_the_chunk_in_the_making_counts_later_chunks_at_the_new_length():
    p = place(sample=35000, sample_rate=32000, cut_samples=30000, chunk=3, chunk_samples=4000, next_samples=2000)
    assert (p.chunk, p.offset_seconds) == (4, 1000 / 32000)
    assert place(31000, 32000, 30000, 3, 4000, 2000).chunk == 3


def test_ws_jam_acknowledges_where_an_update_starts_and_when_it_is_heard(server):
    """Realtime pace, 0.48 s chunks: the update starts in the chunk the acknowledgement names, at its offset (that
    chunk lists it under `changes`), and is heard within a second; a bad ramp is refused by name."""
    import json

    from websockets.sync.client import connect

    from tests.support.jam_client import is_status, messages_until

    start = {"type": "start", "params": {"styles": "jazz", "pace": "realtime", "max_decode_frames": 12, "seed": 3}}
    with connect(f"ws://127.0.0.1:{server.port}/ws/jam", max_size=None) as ws:
        ws.send(json.dumps(start))
        messages_until(ws, lambda m: m["type"] == "chunk" and m["metadata"]["chunk_index"] == 2)
        ws.send(json.dumps({"type": "update", "style_ramp_seconds": -1}))
        assert "style_ramp_seconds" in messages_until(ws, is_status("refused"))[-1]["error"]  # it plays on
        ws.send(json.dumps({"type": "update", "styles": "metal", "style_ramp_seconds": 0.2}))
        ack = messages_until(ws, is_status("updated"))[-1]
        assert ack["params"]["style_ramp_seconds"] == 0.2 and ack["ramp_seconds"] == 0.2
        assert 0 < ack["heard_in_seconds"] < 1.0 and 0 <= ack["offset_seconds"] < 0.48
        chunk = messages_until(ws, lambda m: m["type"] == "chunk" and
                               m["metadata"]["chunk_index"] == ack["applies_from_chunk"])[-1]["metadata"]
    assert chunk["styles"] == "jazz"
    assert chunk["changes"] == [{"offset_seconds": ack["offset_seconds"], "styles": "metal", "style_weights": "1",
                                 "temperature": 1.1, "topk": 40, "guidance_weight": 3.0}]
