"""slmd: a small language model as an OS service."""

__version__ = "0.1.0"
