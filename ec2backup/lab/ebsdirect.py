from __future__ import annotations
from typing import Any
def install(handlers: dict[str, Any]) -> None:
    pass
