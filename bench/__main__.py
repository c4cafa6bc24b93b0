"""``python -m bench``: the cost benchmark (``bench.run``; ``--help`` for its options)."""
import sys

from bench.run import main

sys.exit(main())
