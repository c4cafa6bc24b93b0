"""``make bench``: speed / memory / cost of FS-DINO vs dual-encoder (DINOv2 + SAM) pipelines.

Run ``python -m bench.run`` (``--quick`` for a < 1 min smoke run with tiny models). See ``bench/run.py``.
"""
