"""The ``clinic`` command: the composition root that wires clinic, integrations, worker and inference.

It is the only package allowed to import all four; each command imports what it needs lazily so
that ``clinic --help`` stays fast (``import monai`` alone costs ~2.5 s here).
"""
