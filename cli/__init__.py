"""The ``biomed`` command line: the top layer.

It may import ``training``, ``service`` and the benchmarks; nothing imports it (an import-linter contract).
Each command parses its arguments here and hands plain values to the library.
"""

from cli.main import main

__all__ = ["main"]
