"""The package stays in its room (DESIGN.md §3): no database, broker, protocol or domain imports."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ("clinic", "integrations", "worker", "sqlalchemy", "celery", "pynetdicom")


def test_inference_imports_nothing_forbidden() -> None:
    code = (
        "import sys\n"
        "import inference.registry, inference.dicom_io, inference.demo.train, inference.demo.phantoms\n"
        "import inference.segmentation, inference.volume\n"
        "import inference.demo.ct_train, inference.demo.ct_phantoms\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == ""
