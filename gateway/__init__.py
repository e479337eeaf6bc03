"""spine-gateway: a DICOM node for second opinions on spine imaging."""

__version__ = "0.1.0"
