"""The version of oprm (one place: the package and the documents it writes read it here)."""

__version__ = "0.1.0"
