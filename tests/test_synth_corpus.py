"""Tests of the generated corpora (stage 0 and stage 2): real TTS engines, tiny sizes.

A session-wide fixture generates a tiny LibriSpeech-shaped corpus once with the real
command line; the tests check its layout, that lhotse reads it, its audio format, the
sentence split, the held-out voice, idempotency and determinism.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import kaldialign
import numpy as np
import pytest
import soundfile as sf
from lhotse import validate_recordings_and_supervisions
from lhotse.recipes.librispeech import prepare_librispeech
from lhotse.recipes.musan import prepare_musan

from local.synth_corpus import PARTS, TRAIN_PART, ChapterJob, synthesize_chapter
from local.text_sources import clean_sentence, split_held_out
from local.voices import (
    CLEAN,
    VOICES,
    UtteranceStyle,
    Voice,
    draw_style,
    hibari_speech,
    hibari_tts,
    render_utterance,
    usable_voices,
    warp_frequency_axis,
)
from tests.helpers import FIXTURE_VOICES

PROJECT_DIR = Path(__file__).resolve().parents[1]
SYNTH_SCRIPT = PROJECT_DIR / "local" / "generate_synth_corpus.py"
NOISE_SCRIPT = PROJECT_DIR / "local" / "generate_noise.py"
TINY_OPTIONS = ["--synth-hours", "0.005", "--dev-utts", "3", "--test-utts", "3", "--seed", "7"]


def run_script(script: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        check=True,
    )


def file_digests(directory: Path) -> dict[str, tuple[str, int]]:
    """Content hash and modification time (ns) of every file under ``directory``."""
    return {
        str(path.relative_to(directory)): (
            hashlib.sha256(path.read_bytes()).hexdigest(),
            path.stat().st_mtime_ns,
        )
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def read_transcripts(part_dir: Path) -> dict[str, str]:
    transcripts = {}
    for path in part_dir.rglob("*.trans.txt"):
        for line in path.read_text().splitlines():
            utterance_id, text = line.split(maxsplit=1)
            transcripts[utterance_id] = text
    return transcripts


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp("synth")
    run_script(SYNTH_SCRIPT, "--out-dir", str(out_dir), "--nj", "2", *TINY_OPTIONS)
    return out_dir


@pytest.fixture(scope="session")
def corpus_dir(synth_dir: Path) -> Path:
    return synth_dir / "LibriSpeech"


def test_layout_matches_librispeech(corpus_dir: Path) -> None:
    assert (corpus_dir / "SPEAKERS.TXT").is_file()
    for part in PARTS:
        flacs = sorted((corpus_dir / part).rglob("*.flac"))
        assert flacs, f"no audio in {part}"
        listed = set()
        for transcript in (corpus_dir / part).rglob("*.trans.txt"):
            speaker, chapter = transcript.parent.parent.name, transcript.parent.name
            assert speaker.isdigit() and chapter.isdigit()
            assert transcript.parent.parent.parent == corpus_dir / part
            assert transcript.name == f"{speaker}-{chapter}.trans.txt"
            for line in transcript.read_text().splitlines():
                utterance_id = line.split()[0]
                assert re.fullmatch(rf"{speaker}-{chapter}-\d{{4}}", utterance_id)
                assert (transcript.parent / f"{utterance_id}.flac").is_file()
                listed.add(utterance_id)
        assert {flac.stem for flac in flacs} == listed
    assert not list(corpus_dir.rglob("*.partial")), "temporary files left behind"


def test_prepare_librispeech_reads_corpus(corpus_dir: Path, tmp_path: Path) -> None:
    manifests = prepare_librispeech(corpus_dir, dataset_parts=PARTS, output_dir=tmp_path)
    assert set(manifests) == set(PARTS)
    for part in PARTS:
        recordings = manifests[part]["recordings"]
        supervisions = manifests[part]["supervisions"]
        validate_recordings_and_supervisions(recordings, supervisions, read_data=True)
        assert len(recordings) == len(read_transcripts(corpus_dir / part))
        assert all(recording.sampling_rate == 16000 for recording in recordings)
        for supervision in supervisions:
            assert supervision.text == supervision.text.upper()
            assert re.fullmatch(r"[A-Z']+( [A-Z']+)*", supervision.text)


def test_audio_is_16khz_mono_16bit_flac_with_speech(corpus_dir: Path) -> None:
    for flac in corpus_dir.rglob("*.flac"):
        info = sf.info(str(flac))
        assert (info.samplerate, info.channels, info.format, info.subtype) == (
            16000,
            1,
            "FLAC",
            "PCM_16",
        )
        audio, _ = sf.read(str(flac))
        assert audio.size > 0.3 * 16000
        assert np.max(np.abs(audio)) > 0.05


def test_no_dev_or_test_sentence_in_training(corpus_dir: Path) -> None:
    train = set(read_transcripts(corpus_dir / TRAIN_PART).values())
    for part in PARTS[1:]:
        assert not train & set(read_transcripts(corpus_dir / part).values()), part


def test_test_other_has_a_voice_never_used_in_training(corpus_dir: Path) -> None:
    def speakers(part: str) -> set[str]:
        return {path.name for path in (corpus_dir / part).iterdir() if path.is_dir()}

    unseen = speakers("test-other") - speakers(TRAIN_PART)
    held_out = {str(v.speaker_id) for v in VOICES if v.held_out}
    assert unseen and unseen <= held_out
    assert not held_out & (speakers(TRAIN_PART) | speakers("dev-clean") | speakers("test-clean"))


def test_rerun_is_a_no_op(synth_dir: Path) -> None:
    before = file_digests(synth_dir)
    start = time.monotonic()
    result = run_script(SYNTH_SCRIPT, "--out-dir", str(synth_dir), *TINY_OPTIONS)
    assert time.monotonic() - start < 10
    assert file_digests(synth_dir) == before
    assert result.stderr.count("is complete: skipping it") == len(PARTS)


def test_same_seed_gives_identical_corpus(corpus_dir: Path, tmp_path: Path) -> None:
    run_script(SYNTH_SCRIPT, "--out-dir", str(tmp_path), "--nj", "1", *TINY_OPTIONS)
    again = tmp_path / "LibriSpeech"
    for part in PARTS:
        assert read_transcripts(again / part) == read_transcripts(corpus_dir / part)
    original = {k: v[0] for k, v in file_digests(corpus_dir).items()}
    assert {k: v[0] for k, v in file_digests(again).items()} == original


def test_other_seed_gives_other_sentences(corpus_dir: Path, tmp_path: Path) -> None:
    options = [*TINY_OPTIONS[:-1], "8", "--parts", "dev-clean"]
    run_script(SYNTH_SCRIPT, "--out-dir", str(tmp_path), *options)
    other = read_transcripts(tmp_path / "LibriSpeech" / "dev-clean")
    assert set(other.values()) != set(read_transcripts(corpus_dir / "dev-clean").values())


def test_voices_option_keeps_the_corpus_to_those_voices(tmp_path: Path) -> None:
    options = [*TINY_OPTIONS, "--parts", "dev-clean", "test-other", "--voices", "105", "102"]
    run_script(SYNTH_SCRIPT, "--out-dir", str(tmp_path), *options)
    corpus = tmp_path / "LibriSpeech"
    assert {p.name for p in (corpus / "dev-clean").iterdir() if p.is_dir()} == {"102"}
    # test-other: its first half from the held-out voice, the rest from the training one.
    assert {p.name for p in (corpus / "test-other").iterdir() if p.is_dir()} == {"102", "105"}


def test_prepare_sh_passes_synth_voices_to_the_generator(prepared_dir: Path) -> None:
    corpus = prepared_dir / "download" / "LibriSpeech"
    speakers = {p.name for part in PARTS for p in (corpus / part).iterdir() if p.is_dir()}
    fixture_voices = set(FIXTURE_VOICES.split())
    assert {str(v.speaker_id) for v in VOICES} - fixture_voices  # a real restriction
    assert "105" in speakers and "401" in speakers and speakers <= fixture_voices


@pytest.mark.parametrize(
    ("voices", "message"),
    [(["101", "777"], "--voices: no voice has speaker id 777"),
     (["101", "102"], "need at least one training voice and one held-out voice")],
)
def test_bad_voices_option_is_a_one_line_error(
    voices: list[str], message: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, str(SYNTH_SCRIPT), "--out-dir", str(tmp_path), *TINY_OPTIONS,
         "--parts", "dev-clean", "--voices", *voices],
        cwd=PROJECT_DIR, capture_output=True, text=True,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith(message)
    assert not (tmp_path / "LibriSpeech" / "dev-clean").exists()


def test_interrupted_part_resumes_where_it_stopped(synth_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(synth_dir, copy)
    part_dir = copy / "LibriSpeech" / "dev-clean"
    complete = file_digests(part_dir)
    # An interrupted run leaves no .done marker and a chapter without its transcript.
    (part_dir / ".done").unlink()
    transcript = sorted(part_dir.rglob("*.trans.txt"))[0]
    transcript.unlink()
    run_script(SYNTH_SCRIPT, "--out-dir", str(copy), *TINY_OPTIONS, "--parts", "dev-clean")
    resumed = file_digests(part_dir)
    assert {k: v[0] for k, v in resumed.items()} == {k: v[0] for k, v in complete.items()}
    # The other chapters were not written again (same modification times).
    redone = str(transcript.parent.relative_to(part_dir))
    kept = [k for k in complete if k.endswith(".flac") and not k.startswith(redone)]
    assert kept and all(resumed[k] == complete[k] for k in kept)


def test_missing_voices_are_left_out() -> None:
    # flite and espeak-ng fall back to a default voice without any error for these.
    missing = [
        Voice(997, "flite", "no_such_voice", "M", 1.0),
        Voice(998, "espeak", "en-us+no_such_variant", "M", 1.0),
        Voice(999, "festival", "no_such_voice", "M", 1.0),
        # hibari would try to download this voice; only "heart" is inside the wheel.
        Voice(996, "hibari", "fenrir", "M", 1.0),
    ]
    assert usable_voices([*missing, VOICES[0]]) == (VOICES[0],)


def test_failing_utterance_is_skipped_without_files(tmp_path: Path) -> None:
    broken = Voice(999, "festival", "no_such_voice", "M", 1.0)
    job = ChapterJob(tmp_path, broken, 100000, ("this sentence is never spoken",), CLEAN, 0)
    result = synthesize_chapter(job)
    assert result.num_samples == () and result.num_failed == 1
    assert job.transcript_path.read_text() == ""
    assert not list(tmp_path.glob("*.flac")) and not list(tmp_path.glob(".*"))


def test_pitch_lowered_voice_takes_a_band_edge_near_nyquist(tmp_path: Path) -> None:
    """Lowering the pitch by 300 cents once made sox run the band-pass at 13.5 kHz,
    where a 7 kHz edge is above Nyquist and the utterance failed."""
    style = UtteranceStyle(spectral_shift_cents=-300.0, band_hz=(100.0, 7000.0))
    speech = render_utterance(VOICES[1], "a pitch lowered sentence", style, tmp_path,
                              np.random.default_rng(0))
    assert speech.size > 0.5 * 16000 and np.max(np.abs(speech)) > 0.1


def test_hibari_voice_is_reproducible_and_follows_the_rate(tmp_path: Path) -> None:
    """hibari draws random noise inside its model; the corpus must not depend on it."""
    hibari = next(voice for voice in VOICES if voice.engine == "hibari")
    text = "the neural voice reads this sentence twice"

    def render(duration_stretch: float) -> np.ndarray:
        style = UtteranceStyle(duration_stretch=duration_stretch)
        return render_utterance(hibari, text, style, tmp_path, np.random.default_rng(0))

    normal = render(1.0)
    assert np.array_equal(normal, render(1.0))
    assert render(1.25).size > 1.15 * normal.size


PLAIN_HIBARI = next(v for v in VOICES if v.engine == "hibari" and v.label == "hibari:heart")
PSEUDO_TEXT = "the neural voice reads this sentence in another voice"


def median_f0(speech: np.ndarray, sample_rate: int) -> float:
    """Median F0 in Hz over the loud 40 ms frames: the real cepstrum's peak at 60-400 Hz
    (the cepstrum keeps the vocal tract's envelope at low quefrencies, apart from F0)."""
    frame, hop = int(0.04 * sample_rate), int(0.01 * sample_rate)
    quefrencies = np.arange(sample_rate // 400, sample_rate // 60)
    window = np.hanning(frame)
    frames = [speech[i:i + frame] for i in range(0, speech.size - frame, hop)]
    loudest = max(float(np.sum(x**2)) for x in frames)
    f0s = []
    for x in frames:
        if np.sum(x**2) < 0.05 * loudest:
            continue
        cepstrum = np.fft.irfft(np.log(np.abs(np.fft.rfft(x * window)) + 1e-8))
        f0s.append(sample_rate / quefrencies[np.argmax(cepstrum[quefrencies])])
    assert len(f0s) > 20
    return float(np.median(f0s))


def spectral_centroid(speech: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(speech)) ** 2
    frequencies = np.fft.rfftfreq(speech.size, 1 / sample_rate)
    return float(spectrum @ frequencies / spectrum.sum())


def test_warp_frequency_axis_moves_a_peak_to_scale_times_its_bin() -> None:
    spectrum = np.zeros((601, 3), np.float32)
    spectrum[200] = 1.0
    assert np.array_equal(warp_frequency_axis(spectrum, 1.0), spectrum)
    for scale in (0.84, 1.1):
        warped = warp_frequency_axis(spectrum, scale)
        assert warped.shape == spectrum.shape and warped.dtype == spectrum.dtype
        assert abs(int(np.argmax(warped[:, 0])) - 200 * scale) <= 1


def test_plain_hibari_voice_is_hibaris_own_synthesis() -> None:
    """The pseudo-speakers' path, with no change, gives hibari's own output bit for bit."""
    ours = hibari_speech(PLAIN_HIBARI, PSEUDO_TEXT, 1.0, 1.0, seed=5)
    assert np.array_equal(ours, hibari_tts("heart")(PSEUDO_TEXT, speed=1.0, seed=5))


def test_hibari_pseudo_speaker_has_its_f0_and_vocal_tract() -> None:
    plain = hibari_speech(PLAIN_HIBARI, PSEUDO_TEXT, 1.0, 1.0, seed=5)
    lower_f0 = dataclasses.replace(PLAIN_HIBARI, f0_scale=0.6)
    longer_tract = dataclasses.replace(PLAIN_HIBARI, formant_scale=0.85)
    rate = 24000
    f0_ratio = median_f0(hibari_speech(lower_f0, PSEUDO_TEXT, 1.0, 1.0, 5), rate) / median_f0(
        plain, rate)
    assert 0.5 < f0_ratio < 0.72
    # The utterance's own F0 factor multiplies the voice's.
    styled = hibari_speech(lower_f0, PSEUDO_TEXT, 1.0, 1.2, 5)
    assert 0.62 < median_f0(styled, rate) / median_f0(plain, rate) < 0.82
    assert np.array_equal(styled, hibari_speech(
        dataclasses.replace(PLAIN_HIBARI, f0_scale=0.72), PSEUDO_TEXT, 1.0, 1.0, 5))
    # A longer vocal tract: the whole spectrum moves down, F0 stays.
    warped = hibari_speech(longer_tract, PSEUDO_TEXT, 1.0, 1.0, 5)
    centroid_ratio = spectral_centroid(warped, rate) / spectral_centroid(plain, rate)
    assert centroid_ratio < 0.9  # 0.53: F1 moves into the band of the lowest harmonics
    assert 0.9 < median_f0(warped, rate) / median_f0(plain, rate) < 1.1


def test_voices_are_distinct_speakers_and_keep_the_held_out_ones_out() -> None:
    assert len({v.label for v in VOICES}) == len({v.speaker_id for v in VOICES}) == len(VOICES)
    held_out = [v for v in VOICES if v.held_out]
    accents = {v.name.partition("+")[0] for v in held_out if v.engine == "espeak"}
    variants = {v.name.partition("+")[2] for v in held_out if v.engine == "espeak"}
    for voice in VOICES:
        if voice.held_out:
            continue
        assert (voice.engine, voice.name) not in {(v.engine, v.name) for v in held_out}
        if voice.engine == "espeak":
            accent, _, variant = voice.name.partition("+")
            assert accent not in accents and variant not in variants, voice.label


def test_pocketsphinx_reads_a_clear_voice(tmp_path: Path) -> None:
    """The independent intelligibility check works: clear flite speech is read well."""
    from tools.intelligibility import make_decoder, recognise

    text = "the weather was fine and the children played in the garden"
    speech = render_utterance(VOICES[0], text, UtteranceStyle(), tmp_path,
                              np.random.default_rng(0))
    sf.write(tmp_path / "clear.wav", speech, 16000, subtype="PCM_16")
    hypothesis = recognise(make_decoder(), tmp_path / "clear.wav")
    errors = kaldialign.edit_distance(text.upper().split(), hypothesis.split())["total"]
    assert errors <= 3, hypothesis


def test_each_augmentation_rendering_keeps_exactly_its_effect() -> None:
    from local.voices import EVERY_EFFECT, RENDERINGS

    style = draw_style(EVERY_EFFECT, np.random.default_rng(3))
    plain = UtteranceStyle()
    kept_fields = {
        "none": set(),
        "reverberation": {"reverb"},
        "band-limiting": {"band_hz"},
        "noise": {"noise_colour", "snr_db"},
        "level": {"peak_dbfs"},
        "prosody": {"duration_stretch", "f0_factor", "spectral_shift_cents"},
    }
    assert set(RENDERINGS) == set(kept_fields)
    for name, keep in RENDERINGS.items():
        rendering = keep(style)
        for field in dataclasses.fields(UtteranceStyle):
            expected = style if field.name in kept_fields[name] else plain
            assert getattr(rendering, field.name) == getattr(expected, field.name), (name, field)


def test_augmentation_cost_measures_every_rendering(corpus_dir: Path) -> None:
    result = run_script(
        PROJECT_DIR / "tools" / "augmentation_cost.py", "--corpus-dir", str(corpus_dir),
        "--sentences-per-voice", "1", "--nj", "2",
    )
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    header, voice_rows, average = rows[0], rows[1:-1], rows[-1]
    assert "| reverberation |" in header and header.endswith("| corpus file |")
    assert voice_rows and average.startswith("| weighted average |")
    weights = [float(row.strip("|").split("|")[1]) for row in voice_rows]
    table = [[float(cell) for cell in row.strip("|").split("|")[2:]]
             for row in voice_rows + [average]]
    assert all(len(wers) == 7 for wers in table), rows
    # The last row is the voices' WERs weighted by their training weights
    # (each cell rounded to 0.1).
    for column in range(7):
        expected = sum(w * wers[column] for w, wers in zip(weights, table[:-1])) / sum(weights)
        assert abs(table[-1][column] - expected) <= 0.11, (column, rows)


def test_clean_sentence() -> None:
    assert clean_sentence("He said: 'Don't go' -- twice!") == "he said don't go twice"
    assert clean_sentence("Too short here.") is None
    assert clean_sentence("I bought 3 apples at the big store") is None
    assert clean_sentence("NASA launched a new rocket into space") is None
    assert clean_sentence("Mr. Smith went to Washington last week") is None


def test_split_held_out_is_disjoint_and_deterministic() -> None:
    sentences = [f"sentence number {i}" for i in range(100)]
    train, (dev, test) = split_held_out(sentences, [10, 20], seed=3)
    assert (len(train), len(dev), len(test)) == (70, 10, 20)
    assert not set(train) & (set(dev) | set(test)) and not set(dev) & set(test)
    assert split_held_out(sentences, [10, 20], seed=3) == (train, [dev, test])


def test_generate_noise_is_read_by_prepare_musan(synth_dir: Path, tmp_path: Path) -> None:
    options = ["--librispeech-dir", str(synth_dir / "LibriSpeech"), "--num-files", "2"]
    run_script(NOISE_SCRIPT, "--out-dir", str(tmp_path), *options)
    musan_dir = tmp_path / "musan"
    manifests = prepare_musan(musan_dir, parts=("music", "speech", "noise"))
    for part in ("music", "speech", "noise"):
        recordings = manifests[part]["recordings"]
        assert len(recordings) == 2
        for recording in recordings:
            assert recording.sampling_rate == 16000 and recording.num_channels == 1
            assert 5 < recording.duration <= 30  # icefall drops MUSAN cuts of 5 s or less
    assert len(manifests["music"]["supervisions"]) == 2

    before = file_digests(musan_dir)
    result = run_script(NOISE_SCRIPT, "--out-dir", str(tmp_path), *options)
    assert "is complete: skipping it" in result.stderr
    assert file_digests(musan_dir) == before

    run_script(NOISE_SCRIPT, "--out-dir", str(tmp_path / "again"), *options)
    again = {k: v[0] for k, v in file_digests(tmp_path / "again" / "musan").items()}
    assert again == {k: v[0] for k, v in before.items()}
