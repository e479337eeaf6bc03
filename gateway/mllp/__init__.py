"""The HL7 v2 entry point: the MLLP server that takes ORM^O01 / OMI^O23 orders (``server.py``).

Parsing the messages and storing the referrals is the referral library's (:mod:`gateway.referral.hl7`,
:mod:`gateway.referral.intake`); this package only listens, frames and answers.
"""
