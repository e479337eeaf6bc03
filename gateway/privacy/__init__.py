"""What the node knows about a patient, and how to look for it in text that is about to leave.

Modules, each importing only from those above it in this list:

- ``text``: one folding of text shared by every search (case, accents, ß → ss, transliteration);
- ``words``: which words are common or clinical (a word-frequency list shipped as data, plus the notes'
  own vocabulary), so that a surname such as Long is never searched for on its own;
- ``identifiers``: :class:`~gateway.privacy.identifiers.IdentifierSet`, every identifier the node holds for
  one case (original DICOM header, referral, source), built by
  :func:`~gateway.privacy.identifiers.identifier_set_for_study`, with the search terms the outbound guard
  (and any other check, e.g. burned-in text) uses: :meth:`IdentifierSet.search_terms`.

Nothing is imported here, so that using one layer does not load the word lists.
"""
