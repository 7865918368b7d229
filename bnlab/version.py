"""The package version, in a module of its own: modules that record it (checkpoints, result files) import
it from here, never from the package root (which imports them). setup.py reads it from this file."""

__version__ = "0.1.0"
