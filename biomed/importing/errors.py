"""The one error of an import: the source or its description cannot be served as described."""

from __future__ import annotations


class ImportRefused(ValueError):
    """A model cannot be imported: one line naming what is wrong and what is accepted; nothing is written."""
