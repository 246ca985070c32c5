#!/usr/bin/env python3
"""What each augmentation effect of the generated corpus costs in intelligibility.

For every training voice found in one part of a generated corpus, the first
``--sentences-per-voice`` sentences of that voice are synthesised again several times:
without augmentation, with a single effect of the generator forced on (reverberation,
band-limiting, coloured noise, level), and with only the clean part's prosody (rate, F0,
spectral shift). pocketsphinx, which has heard none of these voices, decodes every
rendering and the corpus file itself. The table gives the WER per voice and per
rendering, and the average weighted with the voices' training weights (the mix of
test-clean).

The effect parameters are drawn from the clean part's ranges (``CLEAN`` in
``local/voices.py``) with every effect switched on, one draw per
sentence, so all renderings of a sentence share the same parameters.

Usage:
    ./tools/augmentation_cost.py --corpus-dir download/LibriSpeech --part test-clean \\
        --sentences-per-voice 10 --nj 2
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
from collections.abc import Sequence
from multiprocessing import Pool
from pathlib import Path

import kaldialign
import numpy as np
import soundfile as sf

from local.voices import (
    EVERY_EFFECT,
    RENDERINGS,
    SAMPLE_RATE,
    VOICES,
    Voice,
    draw_style,
    render_utterance,
)
from shared.utils import HelpFormatter
from tools.intelligibility import Utterance, make_decoder, read_utterances, recognise

CORPUS_COLUMN = "corpus file"


@dataclasses.dataclass(frozen=True)
class VoiceJob:
    voice: Voice
    utterances: tuple[Utterance, ...]
    seed: int


def word_errors(reference: str, hypothesis: str) -> int:
    return kaldialign.edit_distance(reference.split(), hypothesis.split())["total"]


def measure_voice(job: VoiceJob) -> dict[str, float]:
    """WER (%) of every rendering and of the corpus files, for one voice's sentences."""
    decoder = make_decoder()
    errors = dict.fromkeys([*RENDERINGS, CORPUS_COLUMN], 0)
    num_words = 0
    with tempfile.TemporaryDirectory() as work_dir:
        wav_path = Path(work_dir) / "rendering.wav"
        for index, utterance in enumerate(job.utterances):
            text = utterance.text.lower()
            num_words += len(utterance.text.split())
            errors[CORPUS_COLUMN] += word_errors(
                utterance.text, recognise(decoder, utterance.audio_path)
            )
            style = draw_style(EVERY_EFFECT, np.random.default_rng([job.seed, index]))
            for name, keep in RENDERINGS.items():
                rng = np.random.default_rng([job.seed, index, 1])  # the noise samples
                audio = render_utterance(job.voice, text, keep(style), Path(work_dir), rng)
                sf.write(wav_path, audio, SAMPLE_RATE, subtype="PCM_16")
                errors[name] += word_errors(utterance.text, recognise(decoder, wav_path))
    return {name: 100 * count / num_words for name, count in errors.items()}


def weighted_average(
    rows: dict[int, dict[str, float]], weights: dict[int, float]
) -> dict[str, float]:
    """Average of the per-voice rows, each weighted by its voice's training weight."""
    total_weight = sum(weights[speaker] for speaker in rows)
    columns = next(iter(rows.values())).keys()
    return {
        column: sum(weights[s] * row[column] for s, row in rows.items()) / total_weight
        for column in columns
    }


def format_table(voices: Sequence[Voice], rows: dict[int, dict[str, float]]) -> str:
    columns = [*RENDERINGS, CORPUS_COLUMN]
    lines = [
        "| voice | weight | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for voice in voices:
        values = " | ".join(f"{rows[voice.speaker_id][c]:.1f}" for c in columns)
        lines.append(f"| {voice.speaker_id} {voice.label} | {voice.weight} | {values} |")
    average = weighted_average(rows, {v.speaker_id: v.weight for v in voices})
    average_values = " | ".join(f"{average[c]:.1f}" for c in columns)
    lines.append(f"| weighted average | | {average_values} |")
    return "\n".join(lines)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--corpus-dir",
        type=Path,
        default=Path("download/LibriSpeech"),
        help="Generated LibriSpeech-shaped corpus (default: %(default)s).",
    )
    parser.add_argument(
        "--part", default="test-clean", help="Part whose sentences are used (default: %(default)s)."
    )
    parser.add_argument(
        "--sentences-per-voice",
        type=int,
        default=10,
        help="First N sentences of each voice in the part (default: %(default)s).",
    )
    parser.add_argument(
        "--speakers",
        default="",
        help="Comma-separated speaker ids to measure (default: every training voice).",
    )
    parser.add_argument("--nj", type=int, default=2, help="Parallel voices (default: %(default)s).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the effect parameters.")
    return parser


def main() -> None:
    args = get_parser().parse_args()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    part_dir = args.corpus_dir / args.part
    if not part_dir.is_dir():
        raise SystemExit(f"no corpus part at {part_dir}; run ./prepare.sh --stop-stage 0 first")
    wanted = {int(s) for s in args.speakers.split(",") if s}
    by_speaker: dict[int, list[Utterance]] = {}
    for utterance in read_utterances(part_dir):
        by_speaker.setdefault(int(utterance.speaker), []).append(utterance)
    voices = [
        v
        for v in VOICES
        if not v.held_out and v.speaker_id in by_speaker and (not wanted or v.speaker_id in wanted)
    ]
    if not voices:
        raise SystemExit(f"no training voice of {sorted(wanted) or 'any'} in {part_dir}")
    jobs = [
        VoiceJob(v, tuple(by_speaker[v.speaker_id][: args.sentences_per_voice]), args.seed)
        for v in voices
    ]
    logging.info("%d voices x %d sentences x %d renderings", len(jobs), args.sentences_per_voice,
                 len(RENDERINGS))
    with Pool(args.nj) as pool:
        rows = {}
        for job, row in zip(jobs, pool.imap(measure_voice, jobs)):
            rows[job.voice.speaker_id] = row
            summary = ", ".join(f"{name} {wer:.1f}" for name, wer in row.items())
            logging.info("%s: %s", job.voice.label, summary)
    print(format_table(voices, rows))


if __name__ == "__main__":
    main()
