"""The dashboard's logger, and its one configuration (the server's log: session build times, warm-up steps).

Why a module: every app module logs to "mlcm.app"; configuring the handler belongs to the server's start
(``app/main.py``), not to importing a module.
"""

from __future__ import annotations

import logging

__all__ = ["configure_logging", "log"]

log = logging.getLogger("mlcm.app")


def configure_logging() -> None:
    """Timestamped INFO lines on stderr, once per process (the server calls it for every session)."""
    if log.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
