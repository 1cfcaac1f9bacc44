"""scanedge's version, in a module of its own so that internals need not import the package root."""

__all__ = ["__version__"]

__version__ = "0.1.0"
