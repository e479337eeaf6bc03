"""Routing: study completion, spine filter, reviewer assignment and delivery (see issue 5; not built yet)."""
