"""Placeholder: the per-worker broadcast hub lands with the broadcast ring."""
from typing import Any, Optional


class Hub:
    @classmethod
    def for_worker(cls, runtime: Any) -> Optional["Hub"]:
        return None
