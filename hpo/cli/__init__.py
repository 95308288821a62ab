"""The `lushpo` command: one verb per stage, each in its own module of ``hpo.cli._commands``.
The top layer: it reads argv and the ``LUSHPO_*`` environment, and calls `hpo.results`,
`hpo.search` and `pipeline`; nothing imports it."""

from hpo.cli._main import main

__all__ = ["main"]
