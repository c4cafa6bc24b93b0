"""``python -m fsseg.selfcheck``: ``fsseg selfcheck``."""

from fsseg.selfcheck import main

main()
