"""ec2backup: image-level backup, replication, archive and restore for Amazon EC2."""

import os

# numpy (the repository index's arrays) starts an OpenBLAS thread pool at import whose threads
# spin while they wait (measured: 1.4% of a full backup's CPU); nothing here multiplies matrices.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
