"""What one pipeline call did: branch computations reused, transformer MACs spent, cache memory."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CacheStats:
    """What one pipeline call did. ``cache_usage`` is the fraction of branch computations reused."""

    num_steps: int = 0
    forwards: int = 0
    branch_calls: int = 0
    reused: int = 0
    macs_full: int = 0
    macs_spent: int = 0
    reused_per_step: list[int] = field(default_factory=list)
    cache_bytes: int = 0  # the cache pools of the call (all transformers and cache contexts), allocated once

    @property
    def cache_usage(self) -> float:
        return self.reused / self.branch_calls if self.branch_calls else 0.0

    @property
    def macs_speedup(self) -> float:
        """Full-computation MACs divided by the MACs spent (the theoretical speedup of the transformer)."""
        return self.macs_full / self.macs_spent if self.macs_spent else 1.0

    def __str__(self) -> str:
        return (
            f"{self.num_steps} steps, cache usage {self.cache_usage:.1%} ({self.reused}/{self.branch_calls} branch "
            f"computations reused), transformer MACs {self.macs_spent / 1e9:.3f}G of {self.macs_full / 1e9:.3f}G "
            f"({self.macs_speedup:.2f}x), cache {self.cache_bytes / 2**20:.1f} MiB"
        )
