"""`python -m bench` (`make bench`): ec2backup against restic on a generated disk image.

Run `python -m bench --help` for the options; see bench/__init__.py for the methodology.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.measure import StepFailed, drop_page_cache
from bench.report import format_table, summarize
from bench.run import RunResult, run_once
from bench.tools import SetupError, ensure_restic, find_ec2backup

OUT = Path(__file__).resolve().parent / "out"  # gitignored


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Full, 1% incremental (changed-block list) and restore: ec2backup vs restic.",
    )
    p.add_argument("--size-gib", type=float, default=2.0, help="image size (default 2)")
    p.add_argument("--runs", type=int, default=1, help="repetitions; medians are reported")
    p.add_argument("--keep", action="store_true", help="keep image, repositories and logs")
    p.add_argument("--out", type=Path, default=OUT, help=f"output directory (default {OUT})")
    a = p.parse_args(argv)
    if a.runs < 1 or a.size_gib <= 0:
        p.error("--runs must be >= 1 and --size-gib > 0")
    return a


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    try:
        restic_exe, restic_version = ensure_restic()
        ec2backup_exe = find_ec2backup()
    except SetupError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    cold = drop_page_cache()
    print(
        f"bench: {args.size_gib:g} GiB image, {args.runs} run(s); restic {restic_version}; "
        f"cold page cache per step: {'yes' if cold else 'no (not permitted)'}",
        file=sys.stderr,
    )
    t0 = time.perf_counter()
    results: list[RunResult] = []
    work = args.out / "work"
    try:
        for i in range(args.runs):
            print(f"run {i + 1}/{args.runs}", file=sys.stderr)
            results.append(
                run_once(work, args.size_gib, ec2backup_exe, restic_exe, restic_first=i % 2 == 1)
            )
    except (StepFailed, SetupError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            for name in ("disk.img", "repo-ec2backup", "repo-restic", "restic-cache"):
                path = work / name
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)

    summary = summarize(results)
    first = results[0]
    doc = {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
        },
        "restic_version": restic_version,
        "cold_page_cache": cold,
        "image": {
            "size_bytes": first.image.size,
            "blocks": first.image.blocks,
            "zero_blocks": first.image.zero_blocks,
            "text_blocks": first.image.text_blocks,
            "random_blocks": first.image.random_blocks,
            "extents": first.image.extents,
            "changed_blocks": len(first.mutation.changed),
            "sha256_day1": first.image_sha256,
        },
        "runs": args.runs,
        **summary,
        "per_run": [r.as_dict() for r in results],
        "total_s": round(time.perf_counter() - t0, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    print()
    print(format_table(summary, args.runs))
    print(f"\n(results: {args.out / 'results.json'}; total {doc['total_s']}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
