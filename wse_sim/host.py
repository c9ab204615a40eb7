"""What the host machine has: free physical memory (the engines and the program builder
refuse work that would not fit, in one line, instead of being killed)."""

from __future__ import annotations

import os


def free_bytes() -> int | None:
    """Free physical memory, or None where the platform does not say."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
