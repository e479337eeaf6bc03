"""DICOMweb (PS3.18) for the de-identified case: QIDO-RS, WADO-RS and STOW-RS of the reviewers' own cases.

Served on the node's one HTTP application under ``/dicomweb`` (:func:`gateway.dicomweb.routes.dicomweb_routes`).
A caller is a reviewer, by the portal's session or by a bearer token of its own (:mod:`gateway.accounts.tokens`);
it sees only the cases assigned to it and open (:mod:`gateway.dicomweb.access`), and only the de-identified objects
the delivery stage sends it, byte for byte (:mod:`gateway.dicomweb.objects`). Anything else answers 404.
"""
