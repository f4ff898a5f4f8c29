"""Where this package's own worker is (imported first by the package: only ``os``, already loaded)."""

import os


def packaged_worker() -> str:
    """The worker installed inside this package; "" lets the engine search ($SPR_WORKER, ...)."""
    here = os.path.join(os.path.dirname(__file__), "spr-worker")  # os.path: pathlib costs a short program's start
    return here if os.access(here, os.X_OK) else ""
