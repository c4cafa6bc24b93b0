"""``make bench``: speed / memory / cost of FS-DINO vs dual-encoder (DINOv2 + SAM) pipelines.

Run ``python -m bench`` (``--quick`` for a < 1 min smoke run with tiny models, ``--sections a,b`` for a
subset). See ``bench/run.py``. ``python -m bench.distillfss`` (after ``make demo``) and
``python -m bench.teacher_cache`` are separate measurements with their own outputs.
"""
