"""Receiving: the C-ECHO/C-STORE SCP. Its last act for each instance is a committed row; it imports no later stage."""
