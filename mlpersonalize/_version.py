"""The package version: one small module that __init__, package.py and the build (pyproject) all read."""

__version__ = "0.1.0"
