"""`python -m bench` (`make bench`): ec2backup against restic on a generated disk image, the
index memory at scale, and real sessions on the lab (bench.sessions).

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

from bench import index_scale, sessions
from bench.measure import StepFailed, drop_page_cache
from bench.report import format_table, summarize
from bench.run import RunResult, run_once
from bench.tools import SetupError, ensure_restic, find_ec2backup

OUT = Path(__file__).resolve().parent / "out"  # gitignored


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Full, 1% incremental (changed-block list) and restore: ec2backup vs restic; "
        "index memory at scale; the product's sessions and restores on the lab.",
    )
    p.add_argument("--size-gib", type=float, default=2.0, help="image size (default 2)")
    p.add_argument(
        "--runs", type=int, default=3, help="repetitions; medians are reported (default 3)"
    )
    p.add_argument("--keep", action="store_true", help="keep image, repositories and logs")
    p.add_argument("--out", type=Path, default=OUT, help=f"output directory (default {OUT})")
    p.add_argument(
        "--index-scales",
        default=",".join(index_scale.SCALES),
        help="repository index sizes for the index-memory rows, comma-separated, from "
        f"{', '.join(index_scale.SCALES)} (default all; 'none' skips them)",
    )
    p.add_argument(
        "--sessions",
        default=",".join(sessions.ROWS),
        help="lab-session rows (real sessions on the lab, bench.sessions), comma-separated, "
        f"from {', '.join(sessions.ROWS)} (default all; 'none' skips them)",
    )
    p.add_argument(
        "--session-volume-gib",
        type=int,
        default=sessions.DEFAULT_VOLUME_GIB,
        help=f"the lab sessions' data volume (default {sessions.DEFAULT_VOLUME_GIB})",
    )
    p.add_argument(
        "--session-data-gib",
        type=float,
        default=sessions.DEFAULT_DATA_GIB,
        help=f"data written on it (default {sessions.DEFAULT_DATA_GIB:g})",
    )
    p.add_argument(
        "--session-timing-scale",
        type=float,
        default=sessions.DEFAULT_TIMING_SCALE,
        help="the lab timing model's timing_scale, for the rows measured with it (default "
        f"{sessions.DEFAULT_TIMING_SCALE:g})",
    )
    p.add_argument(
        "--session-first-read-mib-s",
        type=float,
        default=sessions.DEFAULT_FIRST_READ_MIB_S,
        help="the timing model's first-read rate of a volume copy (default "
        f"{sessions.DEFAULT_FIRST_READ_MIB_S:g}; see bench/sessions.py)",
    )
    p.add_argument(
        "--session-budget-mib",
        type=int,
        default=sessions.DEFAULT_BUDGET_DATA_MIB,
        help="data per session of the shared_budget row's four sessions (default "
        f"{sessions.DEFAULT_BUDGET_DATA_MIB})",
    )
    a = p.parse_args(argv)
    if a.runs < 1 or a.size_gib <= 0:
        p.error("--runs must be >= 1 and --size-gib > 0")
    if not 0 < a.session_data_gib <= a.session_volume_gib:
        p.error("--session-data-gib must be > 0 and at most --session-volume-gib")
    if a.session_timing_scale < 0 or a.session_first_read_mib_s <= 0 or a.session_budget_mib < 1:
        p.error("--session-timing-scale >= 0, --session-first-read-mib-s > 0, budget >= 1 MiB")
    a.sessions = [] if a.sessions == "none" else a.sessions.split(",")
    unknown_rows = [s for s in a.sessions if s not in sessions.ROWS]
    if unknown_rows:
        p.error(f"--sessions: unknown row {unknown_rows[0]!r}")
    a.index_scales = [] if a.index_scales == "none" else a.index_scales.split(",")
    unknown = [s for s in a.index_scales if s not in index_scale.SCALES]
    if unknown:
        p.error(f"--index-scales: unknown scale {unknown[0]!r}")
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
        print("index memory at scale", file=sys.stderr)
        scale_runs = index_scale.run_scales(work, ec2backup_exe, args.size_gib, args.index_scales)
        session_settings = sessions.Settings(
            volume_gib=args.session_volume_gib,
            data_gib=args.session_data_gib,
            timing_scale=args.session_timing_scale,
            first_read_mib_s=args.session_first_read_mib_s,
            budget_data_mib=args.session_budget_mib,
            rows=args.sessions,
        )
        measured, session_info = sessions.run_sessions(
            args.out / "lab", ec2backup_exe, session_settings, args.keep
        )
    except (StepFailed, SetupError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            scratch = [f"repo-index-{k}" for k in index_scale.SCALES] + ["index-disk.img"]
            for name in ("disk.img", "repo-ec2backup", "repo-restic", "restic-cache", *scratch):
                path = work / name
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)

    summary = summarize(results)
    steps = summary["steps_median"]
    assert isinstance(steps, dict)
    index_rows = index_scale.figures(scale_runs, steps["ec2backup"]["incremental"]["max_rss_mib"])
    figures = summary["figures"]
    assert isinstance(figures, dict)
    figures.update(index_rows)
    session_rows = sessions.figures(measured)
    figures.update(session_rows)
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
        "index_scale": {k: r.as_dict() for k, r in scale_runs.items()},
        "lab_sessions": {**session_info, "measured": measured.as_dict()},
        "total_s": round(time.perf_counter() - t0, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    print()
    print(format_table(summary, args.runs))
    if index_rows:
        print("\nindex memory: peak RSS of a 1% incremental into a repository of N blobs")
        print(index_scale.format_rows(index_rows))
    if args.sessions:
        volume = (
            f"{args.session_volume_gib} GiB volume holding {args.session_data_gib:g} GiB; "
            if set(args.sessions) - {"shared_budget"}
            else ""
        )
        print(
            f"\nlab sessions ({volume}timing model where on: scale "
            f"{args.session_timing_scale:g}, first reads {args.session_first_read_mib_s:g} "
            "MiB/s per copy)"
        )
        if session_rows:
            print(sessions.format_rows(session_rows))
        for row, why in measured.missing.items():
            print(f"{row:<26}not measured: {why.splitlines()[0] if why else ''}")
    print(f"\n(results: {args.out / 'results.json'}; total {doc['total_s']}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
