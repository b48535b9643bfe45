"""Prometheus RED metrics for servers and httpx clients, and the ``/metrics`` exposition.

Every kitmw metric lives in one :class:`Instruments` object per registry
(:func:`instruments`); the policies only look up cached label children on the hot path.
"""

from __future__ import annotations

from ._instruments import DEFAULT_BUCKETS, DEFAULT_SIZE_BUCKETS, Instruments, instruments

__all__ = ["DEFAULT_BUCKETS", "DEFAULT_SIZE_BUCKETS", "Instruments", "instruments"]
