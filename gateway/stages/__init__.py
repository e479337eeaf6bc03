"""Stages: every step of the pipeline and the loop that runs them. Stages meet in the database."""
