"""erc-stream: streaming emotion recognition in conversations."""

__version__ = "0.1.0"
__all__ = ["__version__"]
