"""Experiment scripts (``python -m fsseg.experiments.<name>``)."""
