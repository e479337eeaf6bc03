"""The words the notes may keep: the allowlist behind the notes scrubber.

A word of a referral survives scrubbing only when it is *known*: an ordinary word of the text's language, a
clinical word, or a value of a protected clinical pattern (the scrubber decides the patterns; this module the
words). Everything else that could name someone goes, whether or not anyone foresaw it: a village, a firm, a
national number (the design of Philter, UCSF: keep what is known to be safe rather than find what is not).

The vocabularies are data of maintained packages, read from the files they install, never written here:

- ordinary words: Debian's word lists (``wbritish-large``, ``wamerican-large``, ``wngerman``, ``wswiss``,
  ``wfrench``, ``wdanish``, ``wswedish``, ``wnorwegian``, ``wspanish``), one word a line. The English lists
  write proper nouns capitalised and nothing else: a word found there only capitalised ("Hargreaves",
  "Tuscaloosa") is a name, not a known word;
- clinical words: the English medical word list of ``hunspell-en-med`` (OpenMedSpel: drugs, anatomy,
  diseases, eponyms) and the German one of ``wgerman-medical``, with the project's own curated list
  (``data/clinical_words.txt``: spine scores and grades, drug names, French and Nordic clinical words and the
  abbreviations referral letters use) and the scrubber's older clinical lists.

Each list is held as one sorted bytes object looked up by bisection (:class:`CompactWordSet`), loaded on first
use per language: a few megabytes instead of the hundreds a set of Python strings would hold. A word list
that is not installed is reported by :func:`missing_lists` (the node warns at start); its words are then
unknown, so the scrubber removes more, never less.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import os
import re
import threading
from array import array
from collections.abc import Callable, Iterable, Iterator
from importlib.resources import files
from pathlib import Path

from gateway.privacy.text import fold

__all__ = ["LANGUAGES", "CompactWordSet", "clinical_words", "detect_language", "is_clinical", "is_clinical_acronym",
           "is_known_word", "missing_lists", "warm_up"]

DICT_DIR = Path("/usr/share/dict")
#: Word lists per language (files of ``DICT_DIR``).
WORD_LISTS: dict[str, tuple[str, ...]] = {
    "en": ("british-english-large", "american-english-large"),
    "de": ("ngerman", "swiss"),
    "fr": ("french",),
    "da": ("danish",),
    "sv": ("swedish",),
    "nb": ("bokmaal",),
    "es": ("spanish",),
}
LANGUAGES = tuple(WORD_LISTS)
MEDICAL_LISTS = (Path("/usr/share/hunspell/en_med_glut.dic"), DICT_DIR / "german-medical")

_LOCK = threading.RLock()
_CACHE_FORMAT = 1


def _cache_dir() -> Path:
    """Where built word sets are kept between runs (``$SPINE_GATEWAY_CACHE``, else the user's cache folder)."""
    root = os.environ.get("SPINE_GATEWAY_CACHE") or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "spine-gateway" / "vocabulary"


def _cached(name: str, sources: Iterable[Path], build: Callable[[], CompactWordSet]) -> CompactWordSet:
    """``build()``, or the same set saved by an earlier run from the same source files (their paths, sizes and
    modification times name the cache file): a second or two per list becomes a few milliseconds. A cache that
    cannot be read or written is simply not used."""
    stamp = [name, str(_CACHE_FORMAT)]
    for source in sources:
        try:
            info = source.stat()
            stamp.append(f"{source}:{info.st_size}:{info.st_mtime_ns}")
        except OSError:
            stamp.append(f"{source}:missing")
    path = _cache_dir() / f"{name}-{hashlib.sha256('|'.join(stamp).encode()).hexdigest()[:16]}.bin"
    try:
        return CompactWordSet.from_bytes(path.read_bytes())
    except (OSError, ValueError):
        pass
    words = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_bytes(words.to_bytes())
        temporary.replace(path)
    except OSError:
        pass
    return words


_WORDS_MODULE = Path(__file__).with_name("words.py")


def _curated_path() -> Path:
    return Path(str(files("gateway.privacy") / "data" / "clinical_words.txt"))


class CompactWordSet:
    """A set of strings held as their UTF-8 bytes sorted and joined by newlines, with the offset where each
    begins, looked up by bisection: about 10 bytes a word where a frozenset of str holds about 100."""

    def __init__(self, words: Iterable[str]) -> None:
        ordered = sorted({word.encode("utf-8") for word in words if word and "\n" not in word})
        self._starts = array("I")
        position = 0
        for word in ordered:
            self._starts.append(position)
            position += len(word) + 1
        self._joined = b"\n".join(ordered)

    @classmethod
    def from_bytes(cls, data: bytes) -> CompactWordSet:
        """A set saved by :meth:`to_bytes`."""
        count = int.from_bytes(data[:8], "little")
        words = cls(())
        words._starts = array("I")
        words._starts.frombytes(data[8:8 + 4 * count])
        words._joined = data[8 + 4 * count:]
        return words

    def to_bytes(self) -> bytes:
        return len(self._starts).to_bytes(8, "little") + self._starts.tobytes() + self._joined

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, index: int) -> bytes:
        start = self._starts[index]
        end = self._starts[index + 1] - 1 if index + 1 < len(self._starts) else len(self._joined)
        return self._joined[start:end]

    def __contains__(self, word: object) -> bool:
        if not isinstance(word, str):
            return False
        key = word.encode("utf-8")
        index = bisect.bisect_left(self, key)  # UTF-8 bytes sort as their code points do
        return index < len(self) and self[index] == key

    def __iter__(self) -> Iterator[str]:
        return (word.decode("utf-8") for word in self._joined.split(b"\n")) if self._joined else iter(())


def _fold_entry(word: str) -> str:
    """:func:`fold` for a word list's entry; most are ASCII, whose folding is lower-casing (ten times faster)."""
    return word.lower() if word.isascii() else fold(word)


def _entries(path: Path) -> Iterator[str]:
    """The words of a word list or a hunspell dictionary (``word/FLAGS``), possessive forms left out."""
    try:
        with path.open(encoding="utf-8", errors="replace") as stream:
            for line in stream:
                word = line.split("/", 1)[0].strip()
                if word and not word.endswith(("'s", "’s")) and not word[0].isdigit():
                    yield word
    except FileNotFoundError:
        return


def missing_lists() -> list[str]:
    """The word lists this machine lacks (their words are unknown to the scrubber, which then removes them)."""
    paths = [DICT_DIR / name for names in WORD_LISTS.values() for name in names] + list(MEDICAL_LISTS)
    return [str(path) for path in paths if not path.is_file()]


@functools.cache
def _common(language: str) -> CompactWordSet:
    """Folded ordinary words of ``language`` (for English, only those the lists write in lower case)."""
    paths = [DICT_DIR / name for name in WORD_LISTS[language]]

    def build() -> CompactWordSet:
        if language == "en":
            return CompactWordSet(_fold_entry(w) for p in paths for w in _entries(p) if not w[0].isupper())
        return CompactWordSet(_fold_entry(w) for p in paths for w in _entries(p))

    with _LOCK:
        return _cached(f"common-{language}", paths, build)


@functools.cache
def _english_capitalised() -> CompactWordSet:
    """Folded English words the lists write capitalised (first names such as Peter or Gemma are also words)."""
    paths = [DICT_DIR / name for name in WORD_LISTS["en"]]
    with _LOCK:
        return _cached("capitalised-en", paths, lambda: CompactWordSet(
            _fold_entry(w) for p in paths for w in _entries(p) if w[:1].isupper() and w[1:].islower()))


@functools.cache
def clinical_words() -> CompactWordSet:
    """Folded clinical words: the medical word lists, the curated list and the scrubber's older lists."""
    from gateway.privacy.words import CLINICAL_WORDS

    sources = [*MEDICAL_LISTS, _curated_path(), _WORDS_MODULE, *(DICT_DIR / n for n in WORD_LISTS["en"])]
    with _LOCK:
        return _cached("clinical", sources, lambda: _build_clinical(CLINICAL_WORDS))


def _build_clinical(clinical_words_of_the_scrubber: Iterable[str]) -> CompactWordSet:
    """The clinical words (see :func:`clinical_words`), built from their lists."""
    curated = _curated_path().read_text(encoding="utf-8")
    words: set[str] = set(clinical_words_of_the_scrubber)
    words.update(fold(w) for line in curated.splitlines() if not line.startswith("#")
                 for w in re.split(r"[\s,]+", line) if w)
    english, german = MEDICAL_LISTS
    # The English medical list writes eponyms and other proper nouns capitalised (Parkinson, Baker): they
    # are names too, and are left to the eponym patterns; German capitalises every noun.
    medical = [_fold_entry(w) for w in _entries(english) if not w[0].isupper()]
    medical += [_fold_entry(w) for w in _entries(german)]
    # ... and the medical lists hold a few first names in lower case (chloe, sabine: organisms and
    # vaccines named after people): a name of the English lists that is no English word is not clinical.
    names = _english_capitalised()
    common = _common("en")
    medical = [w for w in medical if w not in names or w in common]
    return CompactWordSet([*words, *medical])


@functools.cache
def _curated_clinical() -> CompactWordSet:
    """Folded clinical words of the curated lists and the German medical list: no names among them."""
    from gateway.privacy.words import CLINICAL_WORDS

    def build() -> CompactWordSet:
        curated = _curated_path().read_text(encoding="utf-8")
        words = {fold(w) for line in curated.splitlines() if not line.startswith("#") for w in re.split(r"[\s,]+", line)
                 if w}
        return CompactWordSet([*words, *CLINICAL_WORDS, *(_fold_entry(w) for w in _entries(MEDICAL_LISTS[1]))])

    with _LOCK:
        return _cached("curated", [_curated_path(), _WORDS_MODULE, MEDICAL_LISTS[1]], build)


@functools.cache
def _eponyms() -> CompactWordSet:
    """Folded eponyms: the English medical list's capitalised entries (Parkinson, Graves, Still, Baker)."""
    with _LOCK:
        return _cached("eponyms", [MEDICAL_LISTS[0]], lambda: CompactWordSet(
            _fold_entry(w) for w in _entries(MEDICAL_LISTS[0]) if w[:1].isupper()))


def is_eponym(word: str) -> bool:
    """``word`` names a disease, sign or test after a person in the English medical list ("Graves", "Still")."""
    return fold(word).strip("'’") in _eponyms()


@functools.cache
def _acronyms() -> CompactWordSet:
    """Folded clinical acronyms: the English medical list's entries in capitals (TLSO, BMD, MRSA, DEXA)."""
    with _LOCK:
        return _cached("acronyms", [MEDICAL_LISTS[0]], lambda: CompactWordSet(
            _fold_entry(w) for w in _entries(MEDICAL_LISTS[0]) if w.isupper() and w.isalpha()))


def is_clinical_acronym(word: str) -> bool:
    """``word`` is a clinical acronym: one the English medical list writes in capitals, or a clinical word of the
    lists (the curated list writes its acronyms in lower case: mri, lbp, tlics). An ordinary word is no acronym:
    UPS, GOSH or CHUM written in capitals name a firm or a hospital, not what "ups" or "gosh" mean."""
    folded = fold(word).strip("'’")
    # the English medical list's lower-case entries are words, not acronyms (chum, target, boots)
    return folded in _acronyms() or folded in _curated_clinical()


def is_curated_clinical(word: str) -> bool:
    """``word`` is a clinical word of the curated lists (stricter than :func:`is_clinical`: the English medical
    list also holds words such as target and boots, which name firms)."""
    return fold(word).strip("'’") in _curated_clinical()


def warm_up(languages: Iterable[str] = ("en", "de", "fr")) -> None:
    """Load the word lists before the first referral needs them (a second or two each)."""
    clinical_words()
    _curated_clinical()
    _eponyms()
    _acronyms()
    _english_capitalised()
    for language in languages:
        _common(language)


# --- the questions the scrubber asks ---

def is_clinical(word: str) -> bool:
    """``word`` (any case or accents) is a clinical word of the lists."""
    folded = fold(word).strip("'’")
    return folded in clinical_words() or any(folded.endswith(suffix) and folded[: -len(suffix)] in clinical_words()
                                             for suffix in ("s", "es", "'s"))


#: The Greek and Latin endings of clinical words in the notes' languages, after a stem of four letters or more:
#: "Dorsalgie", "Laminoplastie", "Sequestrektomie", "Hyperkyphose" are clinical even where no list holds them.
#: "-itis" not after a, o or u: "Petraitis", "Jonaitis", "Moraitis" are surnames (Lithuanian, Greek), while the
#: inflammations have a consonant, "e" or "i" there ("discitis", "osteitis", "sacroiliitis").
_CLINICAL_ENDING = re.compile(
    r"[^\W\d_]{4,}(?:ektomie|ectomie|ectomy|plastie|plasty|algie|algia|parese|paresis|plegie|plegia|pathie|pathy|"
    r"(?<![aou])itis|tomie|otomy|skopie|scopie|oscopy|graphie|grafie|ography|kyphose|lordose|skoliose|stenose|arthrose|"
    r"chondrose|listhese|kyphosis|lordosis|scoliosis|stenosis|arthrosis)(?:n|en|s)?")
_CLINICAL_HEAD_MIN = 5  # "-berg", "-mann" are no heads: "Steinberg" stays a name


def is_clinical_form(word: str) -> bool:
    """``word`` is clinical by its form: a Greek or Latin clinical ending after a stem, or a compound whose head
    (of five letters or more) is a word of the curated clinical list and whose first part a known word
    ("Sphinktertonus", "Rippenserienfraktur", "Fußheber")."""
    folded = fold(word).strip("'’")
    if _CLINICAL_ENDING.fullmatch(folded):
        return True
    if len(folded) < 4 + _CLINICAL_HEAD_MIN or not folded.isalpha():
        return False
    for cut in range(4, len(folded) - _CLINICAL_HEAD_MIN + 1):
        head = folded[cut:]
        if is_eponym(head) or not any(len(form) >= _CLINICAL_HEAD_MIN and is_curated_clinical(form) for form in (
                head, *(head[:-len(ending)] for ending in ("en", "n", "s") if head.endswith(ending)))):
            continue
        for link in _LINKS:
            stem = folded[:cut - len(link)] if link and folded[:cut].endswith(link) else folded[:cut]
            if (not link or folded[:cut].endswith(link)) and len(stem) >= 4 and is_known_word(stem, "de"):
                return True
    return False


def is_name_when_capitalised(word: str, language: str) -> bool:
    """``word`` is a proper noun of English (a first name, a surname, a place: Peter, Gemma, Ross) that is neither
    a clinical word nor a word of ``language`` when that is not English: written capitalised in the middle of a
    sentence, it names someone or somewhere."""
    folded = fold(word).strip("'’")
    if folded not in _english_capitalised() or is_clinical(word):
        return False
    return language == "en" or folded not in _common(language)


def is_known_word(word: str, language: str) -> bool:
    """``word`` is an ordinary word of ``language`` (or of English, the lingua franca of clinical notes), or a
    clinical word, in any inflection the stems below undo, or a German compound of known words."""
    folded = fold(word).strip("'’")
    if not folded:
        return True
    if is_clinical(word):
        return True
    for lang in dict.fromkeys((language, "en")):
        vocabulary = _common(lang)
        if folded in vocabulary or any(stem in vocabulary for stem in _stems(folded, lang)):
            return True
    if language in ("de", "da", "sv", "nb") and _is_compound(folded, language):
        return True
    return False


_EN_SUFFIXES = (("ies", "y"), ("es", ""), ("s", ""), ("ed", ""), ("ed", "e"), ("ing", ""), ("ing", "e"),
                ("ly", ""), ("er", ""), ("ers", ""), ("'s", ""), ("s'", ""))
_SUFFIXES = {
    "en": _EN_SUFFIXES,
    "de": (("en", ""), ("n", ""), ("e", ""), ("s", ""), ("es", ""), ("er", ""), ("em", "")),
    "fr": (("s", ""), ("x", ""), ("e", ""), ("es", "")),
}


def _stems(folded: str, language: str) -> Iterator[str]:
    for suffix, replacement in _SUFFIXES.get(language, (("s", ""), ("e", ""), ("er", ""), ("en", ""))):
        if folded.endswith(suffix) and len(folded) - len(suffix) >= 3:
            yield folded[: len(folded) - len(suffix)] + replacement


_LINKS = ("", "s", "es", "n", "en", "e", "er")


def _is_compound(folded: str, language: str, depth: int = 0) -> bool:
    """A German (or Nordic) compound whose parts are each known words of at least 3 letters (with the
    linking s, n, en, e or er between them): "Gangunsicherheit", "Wurzelreizsyndrom"."""
    if depth > 2 or len(folded) < 7:
        return False
    vocabulary = _common(language)
    for cut in range(len(folded) - 3, 2, -1):
        head, tail = folded[:cut], folded[cut:]
        if not (tail in vocabulary or tail in clinical_words() or _is_compound(tail, language, depth + 1)):
            continue
        for link in _LINKS:
            if link and not head.endswith(link):
                continue
            stem = head[: len(head) - len(link)] if link else head
            if len(stem) >= 3 and (stem in vocabulary or stem in clinical_words()):
                return True
    return False


# --- language ---

_STOPWORDS = {
    "en": "the and of with is was has have for on in to she he her his they this that not no at from but",
    "de": "der die das und mit ist nicht bei seit auf ein eine einer eines dem den des sie er wurde hat keine "
          "zur zum im vom unter",
    "fr": "le la les et avec est des une un pour dans sur pas du au aux elle il ses son depuis qui que ne",
    "da": "og med er ikke har til af på det den en et som hun han fra efter",
    "sv": "och med är inte har till av på det den en ett som hon han från efter",
    "nb": "og med er ikke har til av på det den en et som hun han fra etter",
    "es": "el la los las y con es una un para en por del al que se su sin",
}
_STOP_SETS = {language: frozenset(words.split()) for language, words in _STOPWORDS.items()}
_WORD = re.compile(r"[^\W\d_]+")


def detect_language(text: str, default: str = "en") -> str:
    """The language of ``text`` among :data:`LANGUAGES`, by its function words; ``default`` when unclear."""
    counts = dict.fromkeys(_STOP_SETS, 0)
    for word in _WORD.findall(text.lower()):
        for language, stop in _STOP_SETS.items():
            if word in stop:
                counts[language] += 1
    best = max(counts, key=lambda language: (counts[language], language == default))
    return best if counts[best] >= 2 and counts[best] > counts.get(default, 0) else default
