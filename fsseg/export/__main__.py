"""``python -m fsseg.export``: ``fsseg export``."""

from fsseg.export import main

main()
