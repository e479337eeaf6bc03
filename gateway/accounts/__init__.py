"""Who may use the node's HTTP side, as a library the portal and the CLI share: the portal's accounts and their
passwords (``users``).

It knows no server: the portal (``gateway.web``) signs people in with it, and ``spine-gateway user`` manages the
accounts with it, neither reaching into the other's package.
"""
