"""Restore: whole instances or single volumes, from snapshot sets (or their replicas) and from
image-level backups in the repository.

Both sources converge on snapshots in the target Region and account:
- snapshot path: the set's own snapshots, or replicas there (made now if missing);
- backup path: a snapshot built from the repository with the EBS direct write APIs
  (StartSnapshot, PutSnapshotBlock for every non-zero block, CompleteSnapshot). Chosen over
  writing through a worker's attached volumes because it needs no volume attachments, no AZ, and
  its result serves instance and volume restores, and cross-account sharing, alike.
Then: volumes are created from those snapshots, or an instance is launched with the original
shape (instance type, device mapping, tags) from an image registered over them.

Everything a restore creates is tagged `ec2backup:restore=<restore id>`; snapshots built from
a backup are temporary (`ec2backup:restore-temp`) and are deleted once the volumes exist.
On failure or cancel, cleanup deletes whatever the restore made: nothing half-made survives.
"""
