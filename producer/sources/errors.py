"""Errors of the scene sources, so commands can report them cleanly and exit non-zero."""

from __future__ import annotations


class SourceError(RuntimeError):
    """A scene source cannot deliver: bad input files, a failed download, a bad option.

    The message names the file (or request) and the field or rule that failed.
    """


class CredentialsError(SourceError):
    """The source needs credentials (Earth Engine) that are missing or not usable."""
