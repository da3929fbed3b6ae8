"""The job's lease: :mod:`batch_ops.leases` (moved there so the key ledger, below the jobs, takes the same leases).

Examples:
    >>> from batch_ops.jobs.lease import FileLease
    >>> FileLease.__module__
    'batch_ops.leases'
"""

from __future__ import annotations

from batch_ops.leases import BUSY_RETRY, DEFAULT_LEASE_TTL, FileLease, Lease, NoLease, S3Lease, lease_for

__all__ = ["BUSY_RETRY", "DEFAULT_LEASE_TTL", "FileLease", "Lease", "NoLease", "S3Lease", "lease_for"]
