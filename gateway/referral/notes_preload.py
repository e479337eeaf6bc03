"""Imported once by the notes workers' fork server (``gateway.budget``): loads what every notes job needs (the
scrubber's model, gazetteer, word lists and compiled rules, highdicom's SR tables, the PDF fonts) by doing one
small job, so that the workers forked from it share those pages and no job's budget pays for the loading."""

from gateway.privacy import vocabulary
from gateway.privacy.identifiers import IdentifierSet
from gateway.referral.document import Referral
from gateway.referral.entities import load_engine
from gateway.referral.notes_case import known_identifiers, warm_up
from gateway.referral.notes_sr import load_standard_tables
from gateway.referral.notes_work import NotesInput, scrub_notes

_SAMPLE = {"source": "warm-up", "accession_number": "A1", "urgency": "routine",
           "patient": {"id": "ID1", "name": "Doe^Jane", "birth_date": "1970-01-01"},
           "referrer": {"name": "Dr Alan Smith"},
           "clinical": {"history": "Low back pain for 10 weeks after a fall in Leeds; ibuprofen 400 mg.",
                        "question": "L4-L5 disc herniation?"}}


def _scrub_sample() -> None:
    identifiers = IdentifierSet(patient_names=("Doe^Jane",), ids=("ID1",))
    scrub_notes(NotesInput(document=Referral.model_validate(_SAMPLE), header_notes={},
                           known=known_identifiers(identifiers), date_offset_days=10, day_first=True,
                           evidence=None, identifiers=identifiers))  # type: ignore[arg-type]


load_engine()
vocabulary.warm_up()
load_standard_tables()
warm_up()
_scrub_sample()
