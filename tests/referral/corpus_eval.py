"""Scoring the node's scrubber and guard on the hand-written corpus halves (tests and bench/notes_privacy.py).

The scrubber is given what the node gives it for each referral: the identifier set of the referral's declared
fields (:func:`gateway.privacy.identifiers.from_referral`), as the notes stage turns it into
:class:`~gateway.referral.scrub.KnownIdentifiers`. The guard is then run on the scrubbed text with the same
identifier set: a hit on a text whose annotated identifiers were all removed is a wrongful quarantine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from corpus_files import CorpusCase
from gateway.privacy.identifiers import from_referral
from gateway.referral.notes_case import known_identifiers
from gateway.referral.scrub import TextScrubber
from notes_eval import Score, covered, evaluate


@dataclass
class GuardScore:
    cases: int = 0
    quarantined: list = field(default_factory=list)  # (key, kinds, real: bool)

    def wrongful(self) -> list:
        return [q for q in self.quarantined if not q[2]]


def scrubber_for(item: CorpusCase) -> TextScrubber:
    known = known_identifiers(from_referral(item.referral))
    return TextScrubber(known, 0, day_first=item.style != "us", language=item.language)


def score(items: list[CorpusCase]) -> tuple[Score, GuardScore]:
    scrubbers = {id(item.case): scrubber_for(item) for item in items}
    result = evaluate(lambda case: scrubbers[id(case)].spans(case.text), [i.case for i in items])
    guard = GuardScore()
    for item in items:
        guard.cases += 1
        identifiers = from_referral(item.referral)
        spans = scrubbers[id(item.case)].spans(item.case.text)
        kinds = identifiers.kinds_found(scrubbers[id(item.case)].scrub(item.case.text))
        if kinds:
            gone = covered(spans)
            real = any(not set(range(s.start, s.end)) <= gone for s in item.case.spans if s.known)
            guard.quarantined.append((item.case.key, kinds, real))
    return result, guard
