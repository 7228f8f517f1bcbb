"""Errors of the scene sources, so commands can report them cleanly and exit non-zero."""

from __future__ import annotations


class SourceError(ValueError):
    """A scene source cannot deliver: bad input files, a failed download, a bad option.

    The message names the file (or request) and the field or rule that failed. It is a
    ValueError so that commands treating bad input as ValueError (``produce`` reports a year as
    failed, or a bad ``--source`` as an error) show the message and exit non-zero, no traceback.
    """


class CredentialsError(SourceError):
    """The source needs credentials (Earth Engine) that are missing or not usable."""
