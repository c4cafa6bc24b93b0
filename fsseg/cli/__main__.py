"""``python -m fsseg.cli``: the ``fsseg`` command (as the console script, without installing it)."""

from fsseg.cli import main

main()
