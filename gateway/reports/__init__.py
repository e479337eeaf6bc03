"""Reports back home: the reviewer's report accepted at the SCP, re-identified, delivered to the source.

Layers, each importing only from those before it::

    codes, errors → reidentify → findings, builder (``report create``) → intake (SCP edge) → stage (ReportStage)
"""
