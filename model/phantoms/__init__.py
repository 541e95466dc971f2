"""Procedural phantom studies with exact ground truth (see generator.py and splits.py)."""
