"""One log format for an instance's processes: its web server and its engine."""

from __future__ import annotations

import logging
import sys


def configure_logging(label: str) -> None:
    """INFO and up to stdout (supervisord keeps it), each line naming the process it came from."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(f"%(asctime)s {label} %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_quiet_libraries)
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


def _quiet_libraries(record: logging.LogRecord) -> bool:
    """FunASR logs every model build on the root logger at INFO: keep only its warnings."""
    if record.name == "root" or record.name.startswith(("modelscope", "httpx", "funasr")):
        return record.levelno >= logging.WARNING
    return True
