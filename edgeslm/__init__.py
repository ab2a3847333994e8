"""edgeslm: an on-device inference daemon for small quantized models on edge Linux boards."""

__version__ = "0.1.0"
