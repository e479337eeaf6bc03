"""Reports back home: the reviewer's report accepted at the SCP, re-identified, delivered to the source.

Layers, each importing only from those before it::

    codes, errors, content (reading SR content items) → reidentify → findings, builder (``report create``), oru
    (the ORU^R01 and its ACK); the stages and the SCP intake use them from above
"""
