"""Byte-level DICOM shared by every stage: the VR table, the structural walk of an encoded dataset, in-place
edits of a Part 10 file, the file meta group and the DIMSE command-set encoder.

Nothing here knows the network, the database or a stage; the SCP, de-identification, notes and report
stages import from here.
"""
