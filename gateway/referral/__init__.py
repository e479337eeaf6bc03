"""Referral library: parse (JSON/YAML/HL7) -> detect red flags -> scrub -> build notes SR and PDF.

Modules, each importing only from those above it in this list:

- ``errors``, ``codes``, ``charset``: exceptions, red flag and SR codes, character set choice;
- ``document``: the :class:`~gateway.referral.document.Referral` model and ``parse_referral``;
- ``hl7``: ORM^O01 / OMI^O23 to ``Referral`` (hl7apy) and ``build_ack``;
- ``redflags``: negation-aware red flag detection and ``flags_for``;
- ``scrub``: identifier scrubbing and ``scrub_referral`` -> ``ScrubbedNotes``;
- ``reason``, ``notes_sr``, ``notes_pdf``: short reason, notes SR, Encapsulated PDF.

Nothing is imported here, so that using one layer does not load the DICOM and PDF libraries.
"""
