"""``python -m cli``: the ``iotp`` command without its console script."""

from cli.app import app

app()
