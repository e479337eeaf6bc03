"""The command line, ``spine-gateway``: ``main`` parses, the command modules act."""
