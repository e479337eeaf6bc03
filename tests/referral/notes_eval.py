"""Scoring a scrubbing engine on the annotated notes corpus (used by the tests and bench/notes_privacy.py).

An engine is a function ``case -> [(start, end, label)]`` giving the spans it removes from ``case.text``.

* An identifier span counts as removed when every character of its significant words is inside removed
  spans (titles such as "Mrs" and single-letter initials are not significant).
* A must-keep term survives when no removed span overlaps it.
* A removed span is a true positive when it overlaps an identifier span of any category; precision is
  given per category of the engine's own label.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from gateway.referral.scrub import KnownIdentifiers, TextScrubber
from notes_corpus import CATEGORIES, Case, Span

Removed = list[tuple[int, int, str]]
Engine = Callable[[Case], Removed]

_NOT_SIGNIFICANT = {"mr", "mrs", "ms", "miss", "dr", "prof", "herr", "frau", "md", "med"}
LABEL_CATEGORY = {
    "[NAME]": "name", "[ADDRESS]": "place", "[POSTCODE]": "place", "[INSTITUTION]": "org", "[DATE]": "date",
    "[DOB]": "date", "[ID]": "id", "[PHONE]": "phone", "[EMAIL]": "contact", "[URL]": "contact",
    "[CONTACT]": "contact", "": "date",
}


def category_of(label: str) -> str:
    if re.fullmatch(r"\[\d{4}-\d{2}-\d{2}\]", label):
        return "date"
    return LABEL_CATEGORY.get(label, label)


def known_identifiers(case: Case) -> KnownIdentifiers:
    return KnownIdentifiers(**{key: tuple(values) for key, values in case.known.items()})


def scrubber_engine(use_model: bool = True) -> Engine:
    """The node's own scrubber (with or without the spaCy model) as an engine."""
    def engine(case: Case) -> Removed:
        scrubber = TextScrubber(known_identifiers(case), 0, day_first=case.day_first, use_model=use_model)
        return scrubber.spans(case.text)
    return engine


def significant_positions(case: Case, span: Span) -> set[int]:
    positions: set[int] = set()
    for word in re.finditer(r"\w+", span.text):
        value = word.group(0)
        if value.lower() in _NOT_SIGNIFICANT or (len(value) == 1 and value.isalpha()):
            continue
        positions.update(range(span.start + word.start(), span.start + word.end()))
    return positions


def covered(removed: Removed) -> set[int]:
    return {i for start, end, label in removed if label is not None for i in range(start, end)}


@dataclass
class Score:
    found: dict = field(default_factory=lambda: defaultdict(int))     # (category, known) -> removed
    total: dict = field(default_factory=lambda: defaultdict(int))     # (category, known) -> annotated
    kept: int = 0
    keep_total: int = 0
    true_positive: dict = field(default_factory=lambda: defaultdict(int))   # engine category -> spans
    claimed: dict = field(default_factory=lambda: defaultdict(int))
    misses: list = field(default_factory=list)       # (case key, category, known, text)
    destroyed: list = field(default_factory=list)    # (case key, term)

    def recall(self, category: str, known: bool) -> float | None:
        total = self.total[(category, known)]
        return None if total == 0 else self.found[(category, known)] / total

    def precision(self, category: str) -> float | None:
        claimed = self.claimed[category]
        return None if claimed == 0 else self.true_positive[category] / claimed

    def keep_rate(self) -> float:
        return self.kept / self.keep_total if self.keep_total else 1.0


def evaluate(engine: Engine, cases: Iterable[Case]) -> Score:
    score = Score()
    for case in cases:
        removed = engine(case)
        gone = covered(removed)
        for span in case.spans:
            key = (span.category, span.known)
            score.total[key] += 1
            if significant_positions(case, span) <= gone:
                score.found[key] += 1
            else:
                score.misses.append((case.key, span.category, span.known, span.text))
        for term in case.keep:
            score.keep_total += 1
            if any(start < term.end and term.start < end for start, end, _ in removed):
                score.destroyed.append((case.key, term.text))
            else:
                score.kept += 1
        for start, end, label in removed:
            category = category_of(label)
            score.claimed[category] += 1
            if any(start < s.end and s.start < end for s in case.spans):
                score.true_positive[category] += 1
    return score


def report(name: str, score: Score) -> str:
    lines = [f"{name}:"]
    for category in CATEGORIES:
        known, unknown = score.recall(category, True), score.recall(category, False)
        precision = score.precision(category)
        lines.append(f"  {category:8s} known {_pct(known)} ({score.total[(category, True)]:4d})  "
                     f"unknown {_pct(unknown)} ({score.total[(category, False)]:4d})  precision {_pct(precision)}")
    lines.append(f"  must-keep terms surviving {_pct(score.keep_rate())} ({score.keep_total})")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "   n/a" if value is None else f"{100 * value:5.1f}%"
