"""whisperfarm's Fly.io layer: the Machines API client and the price table."""

from whisperfarm.fly.client import Machine, MachinesClient, auth_header, build_worker_config
from whisperfarm.fly.pricing import SIZES, Size, cost, price_table, size_named

__all__ = [
    "SIZES",
    "Machine",
    "MachinesClient",
    "Size",
    "auth_header",
    "build_worker_config",
    "cost",
    "price_table",
    "size_named",
]
