"""Dataset preparation as the fine-tuner does it, and every bad dataset refused with the problem named."""

import tarfile
import zipfile

import pytest

from engine.training.dataset import (
    DatasetError,
    DatasetOptions,
    load_segments,
    unpack,
)
from tests.support.datasets import clip_dataset, clip_folder, pack
from tests.support.helpers import sine_wav

RATE = 32000
CAPTIONED = DatasetOptions(auto_labeling=False)


def prepare(dataset, tmp_path, options=CAPTIONED, channels=1):
    files = unpack(dataset, tmp_path / "out")
    return load_segments(files, tmp_path / "out", RATE, channels, options)


@pytest.mark.parametrize("name", ["dataset.zip", "dataset.tar", "dataset.tar.gz"])
def test_archives_give_one_segment_per_clip_with_its_caption(tmp_path, name):
    segments = prepare(clip_dataset(tmp_path, name), tmp_path)
    assert [s.caption for s in segments] == ["a pure tone at 220 hz", "a pure tone at 330 hz", "a pure tone at 440 hz"]
    assert all(s.wav.shape == (1, 6 * RATE) for s in segments)  # resampled 44.1 kHz -> 32 kHz


def test_long_files_are_cut_in_30_s_segments_and_short_leftovers_dropped(tmp_path):
    sine_wav(tmp_path / "long.wav", 64.0, rate=RATE)  # 30 + 30 + 4 (dropped)
    sine_wav(tmp_path / "mid.wav", 36.0, rate=RATE)  # 30 + 6 (kept)
    segments = prepare(pack_only(tmp_path, ["long.wav", "mid.wav"]), tmp_path,
                       DatasetOptions(one_same_description="same", auto_labeling=False))
    assert [(s.source, s.start_seconds, s.wav.shape[-1] / RATE) for s in segments] == [
        ("long.wav", 0.0, 30.0), ("long.wav", 30.0, 30.0), ("mid.wav", 0.0, 30.0), ("mid.wav", 30.0, 6.0)]
    assert {s.caption for s in segments} == {"same"}


def pack_only(tmp_path, names):
    archive = tmp_path / "only.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in names:
            zf.write(tmp_path / name, name)
    return archive


def test_stereo_files_are_mixed_to_a_mono_model_and_a_single_file_is_a_dataset(tmp_path):
    path = sine_wav(tmp_path / "one.wav", 7.0, rate=48000, channels=2)
    segments = load_segments(unpack(path, tmp_path / "out"), tmp_path, RATE, 1,
                             DatasetOptions(one_same_description="x", auto_labeling=False))
    assert len(segments) == 1 and segments[0].wav.shape == (1, 7 * RATE)


def test_auto_labeling_appends_tempo_and_key(tmp_path):
    segments = prepare(clip_dataset(tmp_path, clips=1), tmp_path, DatasetOptions(auto_labeling=True))
    caption = segments[0].caption
    assert caption.startswith("a pure tone at 220 hz, ") and caption.endswith("key of A")  # 220 Hz is an A


def test_not_an_archive_is_refused(tmp_path):
    bad = tmp_path / "notes.pdf"
    bad.write_bytes(b"%PDF-1.4 not audio")
    with pytest.raises(DatasetError, match="notes.pdf is not a zip, tar or tar.gz archive nor an audio file"):
        unpack(bad, tmp_path / "out")


def test_an_archive_without_audio_is_refused(tmp_path):
    (tmp_path / "readme.txt").write_text("no audio here")
    archive = tmp_path / "empty.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tmp_path / "readme.txt", "readme.txt")
    with pytest.raises(DatasetError, match="empty.tar holds no audio files"):
        unpack(archive, tmp_path / "out")


def test_an_unreadable_file_is_named(tmp_path):
    clip_folder(tmp_path / "clips")
    (tmp_path / "clips" / "broken.mp3").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(DatasetError, match="broken.mp3 could not be read as audio"):
        prepare(pack(tmp_path / "clips", tmp_path / "d.zip"), tmp_path,
                DatasetOptions(one_same_description="x", auto_labeling=False))


def test_a_file_under_five_seconds_is_named(tmp_path):
    clip_folder(tmp_path / "clips")
    sine_wav(tmp_path / "clips" / "blip.wav", 2.0)
    with pytest.raises(DatasetError, match=r"blip.wav is 2.0 s long; every file must be at least 5 s"):
        prepare(pack(tmp_path / "clips", tmp_path / "d.zip"), tmp_path,
                DatasetOptions(one_same_description="x", auto_labeling=False))


def test_files_without_captions_are_named_unless_a_description_or_labels_give_one(tmp_path):
    clip_folder(tmp_path / "clips", clips=2, captions=False)
    dataset = pack(tmp_path / "clips", tmp_path / "d.zip")
    with pytest.raises(DatasetError, match="no caption for clip0.wav, clip1.wav: .* one_same_description"):
        prepare(dataset, tmp_path)
    assert len(prepare(dataset, tmp_path / "b", DatasetOptions(one_same_description="x", auto_labeling=False))) == 2


def test_a_dataset_over_the_size_limit_is_refused_before_unpacking(tmp_path):
    dataset = clip_dataset(tmp_path)
    with pytest.raises(DatasetError, match="the limit is 0 MB"):
        unpack(dataset, tmp_path / "out", max_bytes=1000)
    bomb = tmp_path / "bomb.zip"  # small packed, large unpacked
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("silence.wav", bytes(4 * 2**20))
    with pytest.raises(DatasetError, match="bomb.zip unpacks to more than 1 MB, the dataset limit"):
        unpack(bomb, tmp_path / "out2", max_bytes=2**20)
    assert not (tmp_path / "out2").exists() or not any((tmp_path / "out2").iterdir())


def test_an_archive_member_outside_the_folder_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../escape.wav", b"x")
    with pytest.raises(DatasetError, match="points outside the archive"):
        unpack(archive, tmp_path / "out")
