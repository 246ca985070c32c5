"""English sentences for the generated (TTS) corpus, read from Debian text packages.

Sources:

- ``wordnet``: the double-quoted example sentences inside the glosses of
  ``/usr/share/wordnet/data.*`` (package ``wordnet-base``); clean, modern English.
- ``fortunes``: the entries of ``/usr/share/games/fortunes/*`` (package ``fortunes``,
  the non-offensive collection only), separated by lines holding ``%``.
- ``kjv``: the King James Bible verses printed by ``bible`` (package
  ``bible-kjv-text``); archaic, so it is off by default.

Every sentence goes through :func:`clean_sentence`, which returns lower-case words made of
letters and apostrophes, or ``None`` if the sentence cannot be spoken exactly as written
(digits, abbreviations, acronyms, symbols): the TTS engine must say what the transcript says.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

WORDNET_DIR = Path("/usr/share/wordnet")
FORTUNES_DIR = Path("/usr/share/games/fortunes")
# Collections that are pictures, program code or not English prose.
SKIPPED_FORTUNE_FILES = frozenset({"ascii-art", "perl", "translate-me"})

TEXT_SOURCES = ("wordnet", "fortunes", "kjv")
DEFAULT_TEXT_SOURCES = ("wordnet", "fortunes")

MIN_WORDS = 5
MAX_WORDS = 20

_QUOTED = re.compile(r'"([^"]+)"')
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# Characters that are dropped silently: punctuation that TTS engines do not pronounce.
_PUNCTUATION = re.compile(r"[,;:()\"!?.`\[\]{}]")
# Hyphens and dashes separate words ("well-known" is said as two words).
_DASHES = re.compile(r"-+")
# Anything left that is not a letter, apostrophe or space makes the sentence unusable
# (digits, "&", "%", "/", "@", non-ASCII letters, ...).
_UNSPEAKABLE = re.compile(r"[^A-Za-z' ]")
_ACRONYM = re.compile(r"\b[A-Z]{2,}\b")
# Single letters other than "a" and "i" are nearly always initials or abbreviations,
# which engines spell out while the transcript would not.
SINGLE_LETTER_WORDS = frozenset({"a", "i"})
_ABBREVIATION = re.compile(r"\b(?:mr|mrs|ms|dr|st|vs|etc|jr|sr|prof|no|vol|co|inc|ltd)\.", re.I)


def clean_sentence(raw: str) -> str | None:
    """Normalise one sentence to lower-case words, or return ``None`` if it is unusable.

    Keeps letters and word-internal apostrophes; rejects sentences with digits, symbols,
    acronyms, abbreviations, or fewer than ``MIN_WORDS`` / more than ``MAX_WORDS`` words.
    """
    text = " ".join(raw.split())
    if not text or _ABBREVIATION.search(text) or _ACRONYM.search(text):
        return None
    text = _DASHES.sub(" ", _PUNCTUATION.sub(" ", text))
    if _UNSPEAKABLE.search(text):
        return None
    words = []
    for word in text.lower().split():
        word = word.strip("'")  # quotes, not apostrophes
        if word:
            words.append(word)
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return None
    if any(len(word) == 1 and word not in SINGLE_LETTER_WORDS for word in words):
        return None
    return " ".join(words)


def split_sentences(paragraph: str) -> list[str]:
    """Split a paragraph of prose at sentence-final punctuation followed by whitespace."""
    return [s for s in _SENTENCE_END.split(" ".join(paragraph.split())) if s]


def read_wordnet_examples(wordnet_dir: Path = WORDNET_DIR) -> Iterator[str]:
    """Yield the raw example sentences quoted in the glosses of WordNet's ``data.*`` files."""
    for path in sorted(wordnet_dir.glob("data.*")):
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                # The licence header lines start with spaces; synset lines with an offset.
                if line.startswith(" ") or "|" not in line:
                    continue
                gloss = line.split("|", 1)[1]
                yield from _QUOTED.findall(gloss)


def read_fortunes(fortunes_dir: Path = FORTUNES_DIR) -> Iterator[str]:
    """Yield the raw sentences of the (non-offensive) fortune collections.

    Entries are separated by ``%`` lines; attribution lines (``-- Author``) are dropped.
    Only the top-level directory is read: the offensive collection lives in ``off/``.
    """
    for path in sorted(fortunes_dir.iterdir()):
        if not path.is_file() or path.suffix or path.name in SKIPPED_FORTUNE_FILES:
            continue  # .dat indices, .u8 symlinks, excluded collections
        text = path.read_bytes().decode("utf-8", errors="replace")
        for entry in re.split(r"^%\s*$", text, flags=re.M):
            lines = [ln for ln in entry.splitlines() if not ln.strip().startswith("--")]
            yield from split_sentences(" ".join(lines))


def read_kjv_verses() -> Iterator[str]:
    """Yield the raw sentences of the King James Bible (needs the ``bible`` program)."""
    if shutil.which("bible") is None:
        raise FileNotFoundError("the 'bible' program (Debian bible-kjv) is not installed")
    out = subprocess.run(
        ["bible", "-f", "gen1:1-rev22:21"], capture_output=True, text=True, check=True
    ).stdout
    for line in out.splitlines():
        # Lines look like "Ge1:1 In the beginning God created the heaven and the earth."
        _, _, verse = line.partition(" ")
        yield from split_sentences(verse)


def read_raw_sentences(source: str) -> Iterator[str]:
    """Yield the raw sentences of one named source (see ``TEXT_SOURCES``)."""
    readers = {"wordnet": read_wordnet_examples, "fortunes": read_fortunes, "kjv": read_kjv_verses}
    if source not in readers:
        raise ValueError(f"unknown text source {source!r}; choose from {TEXT_SOURCES}")
    return readers[source]()


def clean_and_deduplicate(raw_sentences: Iterable[str]) -> list[str]:
    """Clean every sentence and keep the first occurrence of each, in input order."""
    unique: dict[str, None] = {}
    for raw in raw_sentences:
        sentence = clean_sentence(raw)
        if sentence is not None:
            unique.setdefault(sentence, None)
    return list(unique)


def load_sentences(sources: Sequence[str] = DEFAULT_TEXT_SOURCES) -> list[str]:
    """Return the cleaned, de-duplicated sentences of all ``sources``, in a fixed order."""
    sentences: list[str] = []
    for source in sources:
        cleaned = clean_and_deduplicate(read_raw_sentences(source))
        logging.info("Text source %s: %d usable sentences", source, len(cleaned))
        sentences.extend(cleaned)
    # A sentence may occur in two sources: keep it once so that the splits stay disjoint.
    return list(dict.fromkeys(sentences))


def split_held_out(
    sentences: Sequence[str], held_out_sizes: Sequence[int], seed: int
) -> tuple[list[str], list[list[str]]]:
    """Shuffle ``sentences`` with ``seed`` and cut off disjoint held-out sets.

    Returns ``(train, [held_out_1, held_out_2, ...])``; ``train`` holds every sentence not
    in a held-out set. The sentences must already be unique, so no held-out sentence can
    occur in ``train``.
    """
    if len(set(sentences)) != len(sentences):
        raise ValueError("sentences must be de-duplicated before splitting")
    if sum(held_out_sizes) >= len(sentences):
        raise ValueError(f"only {len(sentences)} sentences for held-out sets {held_out_sizes}")
    order = np.random.default_rng(seed).permutation(len(sentences))
    shuffled = [sentences[i] for i in order]
    held_out, start = [], 0
    for size in held_out_sizes:
        held_out.append(shuffled[start : start + size])
        start += size
    return shuffled[start:], held_out
