"""pocketsphinx as an intelligibility check of generated speech: a recogniser
with its bundled US English models, which have heard none of the corpus's TTS
voices, and the utterances of a LibriSpeech-shaped part
(tools/check_intelligibility.py, tools/augmentation_cost.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import soundfile as sf
from pocketsphinx import Decoder

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class Utterance:
    utterance_id: str
    audio_path: Path
    text: str

    @property
    def speaker(self) -> str:
        return self.utterance_id.split("-", 1)[0]


def read_utterances(part_dir: Path) -> list[Utterance]:
    """All utterances of a LibriSpeech part, sorted by id."""
    utterances = []
    for transcript in sorted(part_dir.rglob("*.trans.txt")):
        for line in transcript.read_text().splitlines():
            utterance_id, text = line.split(maxsplit=1)
            audio_path = transcript.parent / f"{utterance_id}.flac"
            utterances.append(Utterance(utterance_id, audio_path, text))
    return utterances


def make_decoder() -> Decoder:
    """A pocketsphinx decoder with its default (bundled) US English models."""
    return Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")


def recognise(decoder: Decoder, audio_path: Path) -> str:
    """Decode one file as a single utterance; return upper-case words."""
    samples, sample_rate = sf.read(str(audio_path), dtype="int16")
    if sample_rate != SAMPLE_RATE or samples.ndim != 1:
        raise ValueError(f"{audio_path}: expected 16 kHz mono, got {sample_rate} Hz")
    decoder.start_utt()
    decoder.process_raw(samples.tobytes(), full_utt=True)
    decoder.end_utt()
    hypothesis = decoder.hyp()
    if hypothesis is None:
        return ""
    # Drop fillers such as <sil>, [NOISE] and alternate-pronunciation marks "word(2)".
    words = [w.split("(")[0] for w in hypothesis.hypstr.split() if w[0] not in "<["]
    return " ".join(words).upper()
