"""Who may use the node's HTTP side, as a library the servers and the CLI share: the portal's accounts and their
passwords (``users``), the reviewers' DICOMweb bearer tokens (``tokens``).

It knows no server: the portal (``gateway.web``) and DICOMweb (``gateway.dicomweb``) check callers with it, and
``spine-gateway user`` and ``spine-gateway dicomweb token`` manage them with it, neither reaching into the other's
package.
"""
