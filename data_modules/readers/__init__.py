"""Readers: the ``FewShotDataset`` interface (``base.py``) and the building blocks benchmark readers
share (folder layouts, split lists, mask areas, DistillFSS's pooled datasets, PATNet's files, the
synthetic renderer, DAVIS sequences, the data-only pickle reader)."""
