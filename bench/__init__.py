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
  (always); ec2backup with its defaults (zstd-3, AES-256-GCM, 32 MiB packs). Both repositories
  are local directories on the same disk.
- Each step runs as its own process after `sync` and `echo 3 > /proc/sys/vm/drop_caches` (when
  permitted), so both read the image and the repository cold. Wall time is measured around the
  process; user/system CPU and peak RSS come from `wait4()` of that process (what
  `/usr/bin/time -v` reports). Process start-up and imports count: that is what a user waits for.
- Figures: full and restore as logical MB/s (image size / wall, 10^6 bytes), incremental as wall
  seconds, repository size after both backups, peak RSS over the three steps. With `--runs N`
  every figure is the median of the N runs, and the first tool alternates between runs.
- Index memory at scale (`bench.index_scale`, `--index-scales 1m,10m`): for 1 and 10 million
  blobs, a repository whose index files name that many synthetic blobs, then a full backup and
  the 1% incremental of the same image through the CLI. `index_rss_mib_<n>` is the peak RSS of
  that incremental, against the same incremental in the main run's small repository; the bound
  is an absolute 512 MiB.
- The VM is shared and has 2 vCPUs: expect +/-10-25% noise between runs (see
  /work/shared/research/performance-facts.md).
"""
