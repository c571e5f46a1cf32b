"""The archive tier: restore points copied into an archive repository whose packs live in an S3
Glacier class, retrieved (RestoreObject) before a restore, and retained by monthly/yearly counts.

An archive repository has the same format as a hot one (docs/repository-format.md) with two
config differences: `data_storage_class` (GLACIER or DEEP_ARCHIVE; metadata objects stay
STANDARD so listing, planning and retention never need a retrieval) and large packs (Glacier
bills per object: 40 KiB of overhead each, and per request).

An archived restore point is **self-contained**: every block is decrypted from the hot
repository and re-encrypted into the archive's own packs under the archive's keys; nothing in
it refers to the hot repository, so forgetting or pruning the hot one cannot affect it. It
records where it came from (`archived_from`, `hot_repository_id`), which makes archiving the
same restore point twice a no-op; blocks already in the archive are deduplicated as usual.

Packs are never read back in the archive (that would need a retrieval): verification checks
the structure (every referenced blob is indexed, every pack exists with its indexed size and
the archive storage class), prune never repacks, and a pack younger than its class's minimum
storage duration is only deleted when explicitly allowed (the early-deletion charge is reported).
"""
