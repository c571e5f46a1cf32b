"""Benchmark: ec2backup against restic on the same generated disk image, in the same run.

Methodology
-----------
- Data: a deterministic sparse raw image (`bench.dataset`; 2 GiB by default): 40% zero blocks
  left as holes, 35% log/config text (zstd-3 ratio ~4.4), 25% random, in file-like extents.
  Day 1 changes 1% of the blocks in place and writes the changed-block list, which plays the
  role of EBS ListChangedBlocks (ec2backup uses it; restic cannot and re-reads the file).
- Steps, for both tools, alternating tool by tool and step by step: full backup, incremental
  backup of the mutated image, restore of that incremental (checked by sha256 against the
  mutated image), repository size (apparent bytes of every file in the repository directory).
- Peer settings: restic from Debian (0.14), repository v2, `--compression auto`, encryption on
  (always); ec2backup with its defaults (zstd-3, AES-256-GCM, 16 MiB packs). Both repositories
  are local directories on the same disk.
- Each step runs as its own process after `sync` and `echo 3 > /proc/sys/vm/drop_caches` (when
  permitted), so both read the image and the repository cold. Wall time is measured around the
  process; user/system CPU and peak RSS come from `wait4()` of that process (what
  `/usr/bin/time -v` reports). Process start-up and imports count: that is what a user waits for.
- Figures: full and restore as logical MB/s (image size / wall, 10^6 bytes; a restore's wall
  includes a `sync` right after it, so both tools' writes are durable: restic leaves them in the
  page cache, ec2backup fsyncs before it exits), incremental as wall seconds, repository size
  after both backups, peak RSS over the three steps. Targets (issue 18): full >= 3.5x,
  incremental >= 25x, restore >= 1.5x, repository <= 1.02x, peak RSS < 1x restic's. With `--runs N`
  (default 3) every figure is the median of the N runs, and the first tool alternates between
  runs. Informational, not a target: ec2backup's full into a repository made with
  `repo init --compression-level 1` (speed against the same restic full, and its size).
- Index memory at scale (`bench.index_scale`, `--index-scales 1m,10m`): for 1 and 10 million
  blobs, a repository whose index files name that many synthetic blobs, then a full backup and
  the 1% incremental of the same image through the CLI. `index_rss_mib_<n>` is the peak RSS of
  that incremental, against the same incremental in the main run's small repository; the bound
  is an absolute 512 MiB.
- Lab sessions (`bench.sessions`, `--sessions ROW,...`, default all; `none` skips them): the
  product's BackupSession and Restore workflows, run by a Temporal dev server, `ec2backup
  worker` and the lab's worker agents against a lab of the bench's own under `--out` (removed
  afterwards unless `--keep`), on one instance whose data volume is `--session-volume-gib`
  (64) holding `--session-data-gib` (8) of lab content (55% text, 40% random, 5% zeros).
  Times come from each workflow's history: wall = started to closed; a session's transfer =
  first `agent_transfer_range` started to the last one closed; a restore's write likewise for
  `agent_write_volume`. Each figure is measured once, whatever `--runs`.
  - timing model off: `session_vs_data_path` is a full session's transfer (MiB of the volume's
    data it read / transfer s) against `image backup` of that volume's file into the same lab
    S3 (same data / process wall), >= 0.7x; `restore_from_backup_mb_s` is `restore volume
    --source backup` of that session's restore point (data / write s; the new volume must hash
    like the source) against `image restore` of the same restore point, >= 0.7x.
  - timing model on (`--session-timing-scale`, default 0.1, multiplies its delays;
    `--session-first-read-mib-s`, default 20, is a copy's first-read rate, below this VM's
    ~80-100 MiB/s data path as AWS's 100 MiB/s is below a worker's; the orchestrator's
    `[performance]` gets the same figures): `copies_speedup` is the transfer time of a full
    with `--read attached --copies 1` over `--copies 2`, >= 1.7x; `read_strategy_full` and
    `read_strategy_incremental` are the session time of the strategy `--read auto` did not
    pick over the one it picked (recorded with its reason), >= 1x; `session_incremental_s` is
    the `--read auto` full's session time over that of the incremental after 1% of the data
    changed, >= 3x. Fulls go to repositories of their own; each incremental's parent is a full
    of the same data.
  - `shared_budget`: four instances (`--session-budget-mib`, default 1024, each), four sessions
    at once with `--read ebs-direct` under a lab account quota of 200 GetSnapshotBlock/s that
    the orchestrator's `[performance] ebs_get_block_rps_account` names too (timing model on):
    the peak rate the lab admitted in any second against the quota; passes with no request
    throttled and every session completed.
- The VM is shared and has 2 vCPUs: expect +/-10-25% noise between runs (see
  /work/shared/research/performance-facts.md).
"""
