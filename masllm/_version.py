"""The library's version, in a leaf module: checkpoints record it without importing the package root."""

__version__ = "0.2.0"
