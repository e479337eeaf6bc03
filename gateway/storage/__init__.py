"""Storage: the database (models, migrations), the case state machine, its wake-ups and the spool."""
