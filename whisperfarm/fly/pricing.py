"""The one place Fly machine sizes and prices live.

Prices are Fly's per-second rates for dedicated-CPU ("performance") machines while they are
started, as of November 2026 (see shared/FLY_MACHINES_API.md). performance-16x is listed as
about twice the 8x and is unconfirmed, so every price can be overridden: pass a mapping of
size name to dollars per second (from settings) as ``prices=``.

Shared-CPU sizes are deliberately absent: a transcription worker pegs its CPUs for minutes,
which shared CPUs throttle. GPU sizes are gone from Fly altogether.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from whisperfarm.errors import FlyGPUUnsupported, UsageError


@dataclass(frozen=True)
class Size:
    """A Fly machine size: what the guest gets and what a started second costs."""

    name: str
    cpus: int
    memory_mb: int
    usd_per_second: float

    @property
    def usd_per_hour(self) -> float:
        return self.usd_per_second * 3600


SIZES: dict[str, Size] = {
    size.name: size
    for size in (
        Size("performance-1x", 1, 2048, 0.0000120),
        Size("performance-2x", 2, 4096, 0.0000239),
        Size("performance-4x", 4, 8192, 0.0000478),
        Size("performance-8x", 8, 16384, 0.0000957),
        # Unconfirmed: Fly's table says "about 2x the 8x".
        Size("performance-16x", 16, 32768, 0.0001914),
    )
}

# A stopped machine bills no CPU or RAM, only its root filesystem (the unpacked image).
STOPPED_USD_PER_GB_MONTH = 0.15

# Fly's former GPU presets; named so the error can say why they fail.
_GPU_SIZES = frozenset(
    {"a10", "l40s", "a100-40gb", "a100-80gb", "a100-pcie-40gb", "a100-sxm4-80gb"}
)

GPU_GONE_MESSAGE = (
    "Fly no longer offers GPU machines (deprecated Feb 2026, gone since 1 Aug 2026); "
    "use a performance CPU size instead, e.g. performance-4x or performance-8x"
)


def _valid_names() -> str:
    return ", ".join(SIZES)


def size_named(name: str, *, prices: Mapping[str, float] | None = None) -> Size:
    """The size called ``name``, with its price taken from ``prices`` when given there."""
    key = name.strip().lower()
    if key in _GPU_SIZES or "gpu" in key:
        raise FlyGPUUnsupported(GPU_GONE_MESSAGE)
    if key not in SIZES:
        hint = " Shared-CPU sizes are not supported." if key.startswith("shared") else ""
        raise UsageError(f"Unknown Fly machine size {name!r}.{hint} Use one of: {_valid_names()}")
    size = SIZES[key]
    override = _checked_prices(prices).get(key)
    return size if override is None else replace(size, usd_per_second=override)


def _checked_prices(prices: Mapping[str, float] | None) -> dict[str, float]:
    if not prices:
        return {}
    checked: dict[str, float] = {}
    for name, price in prices.items():
        key = name.strip().lower()
        if key not in SIZES:
            raise UsageError(
                f"Price override for unknown size {name!r}; sizes are: {_valid_names()}"
            )
        if price < 0:
            raise UsageError(f"Price override for {name} is negative ({price}); use dollars/second")
        checked[key] = float(price)
    return checked


def price_table(prices: Mapping[str, float] | None = None) -> dict[str, Size]:
    """Every size, with overrides applied."""
    overrides = _checked_prices(prices)
    return {
        name: replace(size, usd_per_second=overrides.get(name, size.usd_per_second))
        for name, size in SIZES.items()
    }


def cost(size: Size | str, seconds: float, *, prices: Mapping[str, float] | None = None) -> float:
    """Dollars for ``seconds`` of one started machine of ``size``."""
    if seconds < 0:
        raise ValueError(f"seconds must be >= 0, got {seconds}")
    if isinstance(size, str):
        size = size_named(size, prices=prices)
    elif prices:
        override = _checked_prices(prices).get(size.name)
        if override is not None:
            size = replace(size, usd_per_second=override)
    return size.usd_per_second * seconds


def stopped_cost_per_month(machines: int, rootfs_gb: float) -> float:
    """Dollars a month that ``machines`` stopped machines cost: their root filesystems."""
    if machines < 0 or rootfs_gb < 0:
        raise ValueError("machines and rootfs_gb must be >= 0")
    return machines * rootfs_gb * STOPPED_USD_PER_GB_MONTH
