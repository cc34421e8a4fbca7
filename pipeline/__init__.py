"""GalaxiesML builder: pipeline assembly, options and command line."""

__version__ = "0.1.0"
