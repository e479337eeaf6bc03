"""The web portal: server-rendered pages for referrers, reviewers and operators (see docs/portal.md).

Layers: ``accounts`` (users and passwords, no web framework: the CLI uses it) → ``auth`` (sessions, CSRF,
login rate limit) → ``views`` (what each page shows, read from the database) → ``referrer``, ``reviewer``,
``ops`` (the pages of each role) → ``app`` (the Starlette application).
"""
