"""Demo models trained on synthetic chest radiograph phantoms (no weights can be downloaded here)."""
