"""The global `--output json|table` (`ec2backup --output json ...`), for every command.

The root callback sets it; commands read it here (a tiny module: `image backup` must not pay
for importing what the table printers need). A command's own `--json` flag means the same.
"""

from __future__ import annotations

import os

OUTPUT_ENV = "EC2BACKUP_OUTPUT"


def output_format() -> str:
    return os.environ.get(OUTPUT_ENV) or "table"


def json_output(flag: bool = False) -> bool:
    return flag or output_format() == "json"
