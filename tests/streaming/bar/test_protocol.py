"""Bar mode's pure parts: the bar clock, the spool, the loop context, the style blend, loudness matching and the
protocol's parsing, against magenta-retry's documented messages and rules (github betweentwomidnights/magenta-rt
app.py, jam_worker.py, utils.py)."""

import base64
import json
import math
from fractions import Fraction

import pytest
import torch

from streaming import formats as audio
from streaming.bar import protocol as bp
from streaming.bar.source import BarParams
from streaming.bar.timeline import BarClock, Spool, exact_bpm, loop_context, loop_slice, spliced_context, style_blend
from streaming.jam.protocol import ProtocolError


@pytest.mark.parametrize("bpm", [120, 93.5, 173])
@pytest.mark.parametrize("rate", [32000, 48000, 44100])
def test_chunks_are_exact_bars_of_one_stream(bpm, rate):
    """Chunk k is [round(k*B*S), round((k+1)*B*S)) with S = sr*60*bpb/bpm exactly: lengths never drift, and they
    tile the stream without gaps or overlaps (checked against exact rational arithmetic over 1000 chunks)."""
    clock = BarClock(rate, exact_bpm(bpm), 4)
    spb = Fraction(rate * 60 * 4) / Fraction(str(bpm))
    previous_end = 0
    for k in range(1000):
        start, end = clock.chunk_bounds(k, 2)
        assert start == previous_end == round(k * 2 * spb)
        assert end - start in (math.floor(2 * spb), math.ceil(2 * spb))
        previous_end = end
    assert previous_end == round(2000 * spb)  # no drift after 1000 chunks


def test_spool_cuts_across_pieces_of_any_size_and_bounds_memory():
    clock = BarClock(48000, exact_bpm(93.5), 4)
    spool = Spool(2, history=1000, crossfade=0)
    stream = torch.randn(2, 400_000)
    fed, k, cut = 0, 0, []
    generator = torch.Generator().manual_seed(0)
    while fed < stream.shape[-1]:
        n = int(torch.randint(1, 30_000, (1,), generator=generator))
        spool.append(stream[:, fed:fed + n])
        fed = min(fed + n, stream.shape[-1])
        start, end = clock.chunk_bounds(k, 1)
        while spool.end >= end:
            cut.append(spool.cut(start, end))
            k += 1
            start, end = clock.chunk_bounds(k, 1)
        assert spool._audio.shape[-1] <= 1000 + 30_000 + (end - start)  # never the whole stream
    joined = torch.cat(cut, dim=-1)
    assert torch.equal(joined, stream[:, :joined.shape[-1]])
    assert torch.equal(spool.recent(), stream[:, joined.shape[-1] - 1000: joined.shape[-1]])
    with pytest.raises(ValueError):
        spool.cut(0, 10)  # not where the last cut ended


def test_spool_seam_drops_what_follows_the_cut_and_crossfades():
    spool = Spool(1, history=100, crossfade=8)
    spool.append(torch.ones(1, 50))
    spool.cut(0, 30)
    spool.seam()
    assert spool.end == 30
    spool.append(torch.zeros(1, 20))
    out = spool.cut(30, 50)[0]
    assert out[0] > 0.9 and 0 < out[4] < 1 and out[7] < 0.2 and torch.all(out[8:] == 0)


def test_loop_context_ends_on_the_loop_end_and_fills_from_the_tiled_loop():
    loop = torch.arange(10_000, dtype=torch.float32)[None]
    clock = BarClock(1000, exact_bpm(120), 4)  # 2000 samples a bar
    context, bars = loop_context(loop, clock, 25_600)
    assert context.shape == (1, 25_600) and bars == 12
    assert context[0, -1] == 9_999  # ends where the loop ends: a bar line
    assert torch.equal(context[0, -10_000:], loop[0]) and torch.equal(context[0, -20_000:-10_000], loop[0])
    short, bars = loop_context(loop[:, :500], clock, 1_280)  # a loop shorter than the window: tiled
    assert short.shape == (1, 1_280) and bars == 1 and short[0, -1] == 499


def test_splice_replaces_the_last_anchor_bars_and_keeps_the_rest():
    clock = BarClock(1000, exact_bpm(120), 4)
    recent, anchor = torch.zeros(1, 8000), torch.ones(1, 3000)
    spliced = spliced_context(recent, anchor, clock, 2.0, 6000)
    assert spliced.shape == (1, 6000)
    assert torch.all(spliced[0, :2000] == 0) and torch.all(spliced[0, 2000:] == 1)


def test_style_blend_gives_the_loop_its_share_of_guidance():
    assert style_blend(["jazz"], [1.0], loop_weight=1.0, guidance=4.0) == (("jazz",), (1.0,), 2.0)
    assert style_blend(["jazz", "rock"], [1.0, 3.0], loop_weight=0.0, guidance=4.0)[2] == 4.0
    assert style_blend([], [], loop_weight=1.0, guidance=5.0)[2] == 0.0  # the loop alone: pure continuation
    assert style_blend(["jazz"], [0.0], 1.0, 5.0)[2] == 0.0


def test_loop_slice_follows_the_loop_from_its_start():
    loop = torch.arange(5, dtype=torch.float32)[None]
    assert loop_slice(loop, 3, 6).tolist() == [[3, 4, 0, 1, 2, 3]]


def test_loudness_matching_lufs_rms_and_peak_limit():
    t = torch.arange(48000) / 48000
    reference = 0.5 * torch.sin(2 * math.pi * 440 * t)[None].repeat(2, 1)
    quiet = 0.05 * torch.sin(2 * math.pi * 330 * t)[None].repeat(2, 1)
    matched, stats = audio.match_loudness(reference, quiet, 48000, "lufs", headroom_db=1.0)
    assert stats["method"] == "lufs" and 15 < stats["applied_gain_db"] < 25
    assert float(matched.abs().max()) <= 10 ** (-1 / 20) + 1e-6  # limited to -1 dBFS
    _, stats = audio.match_loudness(reference, quiet, 48000, "rms", headroom_db=1.0)
    assert stats["method"] == "rms" and abs(stats["applied_gain_db"] - 20) < 0.1
    _, stats = audio.match_loudness(reference[:, :4000], quiet[:, :4000], 48000, "auto", 1.0)  # < 0.4 s: RMS
    assert stats["method"] == "rms"
    same, stats = audio.match_loudness(reference, quiet, 48000, "none", 1.0)
    assert same is quiet and stats["applied_gain_db"] == 0.0
    silent, _ = audio.match_loudness(reference, torch.zeros(2, 48000), 48000, "auto", 1.0)
    assert torch.all(silent == 0)
    with pytest.raises(ValueError, match="loudness_mode"):
        audio.match_loudness(reference, quiet, 48000, "loud", 1.0)


def start_message(**params):
    return {"type": "start", "mode": "bar", "binary_audio": False,
            "loop_audio_b64": base64.b64encode(b"RIFF....").decode(), "params": params}


def test_start_defaults_are_magenta_retrys():
    start = bp.command(bp.load(json.dumps(start_message())))
    params = bp.bar_params(start.raw_params, loop_rate=44100)
    assert params == BarParams(bpm=120.0, beats_per_bar=4, bars_per_chunk=8, target_sr=44100, loudness_mode="none",
                               headroom_db=1.0, styles=(), style_weights=(), loop_weight=1.0, guidance_weight=1.1,
                               temperature=1.1, topk=40)
    with_rate = bp.bar_params(bp.command(bp.load(json.dumps(start_message(target_sr=48000)))).raw_params, 44100)
    assert with_rate.target_sr == 48000


@pytest.mark.parametrize("params, field", [
    ({"bpm": 0}, "bpm"), ({"bpm": "fast"}, "bpm"), ({"beats_per_bar": 2.5}, "beats_per_bar"),
    ({"bars_per_chunk": 0}, "bars_per_chunk"), ({"target_sr": 10**20}, "target_sr"),
    ({"loudness_mode": "loud"}, "loudness_mode"), ({"topk": 0}, "topk"), ({"temperature": -1}, "temperature"),
    ({"style_weights": "1,x", "styles": "a, b"}, "style_weights"), ({"styles": "a,b,c,d,e"}, "styles"),
    ({"bpm": 20, "bars_per_chunk": 64}, "bars_per_chunk"), ({"headroom_db": float("nan")}, "headroom_db")])
def test_bad_parameters_are_refused_naming_the_field(params, field):
    with pytest.raises(ProtocolError, match=field):
        bp.bar_params(bp.command(bp.load(json.dumps(start_message(**params)))).raw_params, 44100)


def test_start_needs_a_loop_or_a_session_id():
    with pytest.raises(ProtocolError, match="loop_audio_b64 required"):
        bp.command({"type": "start", "mode": "bar", "params": {}})
    attach = bp.command({"type": "start", "mode": "bar", "session_id": "abc"})
    assert attach.session_id == "abc" and attach.loop is None
    with pytest.raises(ProtocolError, match="base64"):
        bp.command({"type": "start", "mode": "bar", "loop_audio_b64": "not base64!"})
    with pytest.raises(ProtocolError, match="unknown parameter"):
        bp.command(start_message(bmp=120))


def test_audio_messages_may_be_large_others_keep_64_kib():
    big = base64.b64encode(bytes(12 * 2**20)).decode()  # a 12 MB loop: 16 MiB of base64
    start = bp.load(json.dumps({"type": "start", "mode": "bar", "loop_audio_b64": big}))
    assert len(bp.command(start).loop) == 12 * 2**20
    bp.load(json.dumps({"type": "reseed", "session_id": "s", "loop_audio_b64": big}))
    bp.load(json.dumps({"type": "reseed_splice", "session_id": "s", "combined_audio_b64": big}))
    with pytest.raises(ProtocolError, match="too large"):
        bp.load(json.dumps({"type": "update", "styles": "x" * 70_000}))
    with pytest.raises(ProtocolError, match="too large"):
        bp.load(json.dumps({"type": "start", "loop_audio_b64": "A" * (bp.MAX_AUDIO_MESSAGE_BYTES + 1)}))


def test_consume_reseed_splice_update_stop_ping():
    assert bp.command({"type": "consume", "session_id": "s", "chunk_index": 3}) == bp.Consume("s", 3)
    with pytest.raises(ProtocolError, match="chunk_index"):
        bp.command({"type": "consume", "session_id": "s", "chunk_index": "three"})
    assert bp.command({"type": "reseed_splice", "session_id": "s"}) == bp.ReseedSplice("s", 2.0, None)
    with pytest.raises(ProtocolError, match="loop_audio_b64 required"):
        bp.command({"type": "reseed", "session_id": "s"})
    assert isinstance(bp.command({"type": "stop"}), bp.Stop) and isinstance(bp.command({"type": "ping"}), bp.Ping)
    with pytest.raises(ProtocolError, match="Unknown type"):
        bp.command({"type": "dance"})


def test_update_changes_steering_only_and_validates_first():
    params = BarParams(bpm=120, beats_per_bar=4, bars_per_chunk=2, target_sr=48000, styles=("jazz",),
                       style_weights=(1.0,))
    changed = bp.updated(params, bp.command({"type": "update", "styles": "rock, funk", "temperature": 0.9}).changes)
    assert changed.styles == ("rock", "funk") and changed.style_weights == (1.0, 1.0)
    assert changed.temperature == 0.9 and changed.bpm == 120
    with pytest.raises(ProtocolError, match="bpm"):
        bp.updated(params, {"bpm": 100})
    with pytest.raises(ProtocolError, match="topk"):
        bp.updated(params, {"topk": 0})


def test_http_forms_as_gary4juce_sends_them():
    """JUCE sends every field as text: bpm "120.000", loop_weight "0.500", topk "40", and fields we do not know
    (mean, centroid_weights) which are ignored as FastAPI ignores them."""
    fields = {"bpm": "120.000", "bars": "4", "beats_per_bar": "4", "styles": "acid house", "style_weights": "",
              "loop_weight": "0.500", "guidance_weight": "5.000", "temperature": "1.200", "topk": "40",
              "loudness_mode": "none", "loudness_headroom_db": "1.0", "intro_bars_to_drop": "0",
              "request_id": "abc", "mean": "0.5", "centroid_weights": "0,1"}
    form = bp.read_form(bp.GenerateForm, fields)
    params = bp.bar_params(form.model_dump(), loop_rate=44100, bars_key="bars")
    assert (params.bpm, params.bars_per_chunk, params.loop_weight, params.topk) == (120.0, 4, 0.5, 40)
    assert params.target_sr == 44100 and params.styles == ("acid house",) and form.intro_bars_to_drop == 0
    with pytest.raises(ProtocolError, match="topk"):
        bp.read_form(bp.GenerateForm, {"topk": "many"})
    assert bp.read_form(bp.JamStartForm, {"target_sample_rate": "48000"}).target_sr == 48000


def test_forms_read_numbers_from_text_and_name_fields_as_the_form_did():
    """A form's numbers are text: "3.000" is the integer 3, "93.5" a number; text that is no such number is
    refused naming the field as the form named it; an empty target_sample_rate is the loop's rate; the socket's
    names are taken too, unknown fields ignored, and each route has app.py's defaults."""
    form = bp.read_form(bp.JamStartForm, {"bpm": "93.5", "beats_per_bar": "3.000", "bars_per_chunk": "2",
                                          "loudness_headroom_db": "6", "target_sample_rate": "", "volume": "11"})
    assert (form.bpm, form.beats_per_bar, form.bars_per_chunk, form.headroom_db, form.target_sr) == \
        (93.5, 3, 2, 6.0, None)
    assert isinstance(form.beats_per_bar, int) and form.loudness_mode == "auto"
    assert bp.read_form(bp.JamStartForm, {"headroom_db": "6"}).headroom_db == 6.0
    assert (bp.read_form(bp.GenerateForm, {}).guidance_weight, bp.read_form(bp.GenerateForm, {}).styles) == \
        (5.0, "acid house")
    for fields, error in [({"beats_per_bar": "2.5"}, "^beats_per_bar must be an integer, got '2.5'"),
                          ({"bpm": ""}, "^bpm must be a number, got ''"),
                          ({"bpm": "nan"}, "^bpm must be a number, got nan"),
                          ({"loudness_headroom_db": "loud"}, "^loudness_headroom_db must be a number, got 'loud'"),
                          ({"target_sample_rate": "100"}, "^target_sample_rate must be within \\[8000, 192000\\]")]:
        with pytest.raises(ProtocolError, match=error):
            bp.read_form(bp.JamStartForm, fields)
    assert bp.form_values(bp.Steering, {"topk": "12", "styles": "jazz", "session_id": "s"}) == \
        {"topk": 12, "styles": "jazz"}  # /jam/update: only the steering fields, as JSON values


def test_an_update_keeps_exactly_what_it_does_not_change():
    params = BarParams(bpm=120, beats_per_bar=4, bars_per_chunk=2, target_sr=48000, styles=("jazz", "rock"),
                       style_weights=(0.1234567, 2.0))
    assert bp.updated(params, {"temperature": 0.9}).style_weights == (0.1234567, 2.0)
    assert bp.updated(params, {"style_weights": "3"}).style_weights == (3.0, 1.0)  # a missing weight is 1.0
    with pytest.raises(ProtocolError, match="^style_weights has 3 values for 2 styles"):
        bp.updated(params, {"style_weights": "1,1,1"})
    with pytest.raises(ProtocolError, match="^update cannot change bpm, seed: only styles, style_weights"):
        bp.updated(params, {"seed": 1, "bpm": 100, "topk": 3})


@pytest.mark.parametrize("message, error", [
    ({"type": "consume", "session_id": ""}, "session_id must be the string `started` gave"),
    ({"type": "consume", "session_id": "x" * 129}, "session_id must be the string `started` gave"),
    ({"type": "consume", "chunk_index": None}, "chunk_index must be an integer, got None"),
    ({"type": "reseed", "loop_audio_b64": 5}, "loop_audio_b64 must be a base64 string of an audio file"),
    ({"type": "reseed_splice", "combined_audio_b64": "***"}, "combined_audio_b64 is not valid base64"),
    ({"type": "reseed_splice", "anchor_bars": 65}, "anchor_bars must be within \\[0, 64\\], got 65"),
    ({"type": "start", "mode": "bar", "session_id": "s", "params": [1]}, "params must be a JSON object"),
    ({"type": "start", "mode": "bar", "session_id": "s", "binary_audio": None}, "binary_audio must be true or false"),
    ({"type": "start", "mode": "bar", "session_id": "s", "params": {"styles": 5}}, "styles and style_weights must"),
    ({"type": "start", "mode": "bar", "session_id": "s", "params": {"seed": -2}}, "seed must be within"),
])
def test_message_fields_are_refused_naming_them(message, error):
    with pytest.raises(ProtocolError, match=f"^{error}"):
        bp.command(message)


def test_empty_values_are_none_and_seed_minus_one_is_random():
    start = bp.command({"type": "start", "mode": "bar", "session_id": "s", "params": None, "loop_audio_b64": ""})
    assert (start.loop, start.seed, start.raw_params["styles"]) == (None, None, "")
    assert bp.command(start_message(seed=-1.0)).seed is None and bp.command(start_message(seed=5.0)).seed == 5
    assert bp.command({"type": "consume"}) == bp.Consume(None, -1)
