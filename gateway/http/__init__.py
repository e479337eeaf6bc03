"""The HTTP entry point: every endpoint of the node on one Starlette application, served by uvicorn.

- ``app.py`` builds the application: ``/healthz`` and ``/metrics`` (``health.py``), ``POST /referrals`` and
  ``GET /referrals/schema`` (``referrals.py``), and the portal's routes (:mod:`gateway.web`), handed in by the
  node, which builds the application once (:mod:`gateway.node`).
- ``api.py`` is what the API endpoints share: JSON answers, the bearer token checked before the body is read,
  the bounded body, one line in the log for a failing endpoint.
- ``server.py`` serves an application: the listening socket, uvicorn in a thread, and the protocol-level limits
  of issue 28 (:mod:`gateway.http.limits`).
"""
