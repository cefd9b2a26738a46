"""A slow link for scripts/bench_fleet.py: a TCP proxy in front of the coordinator whose
bytes, from every connection and in both directions, share one capped rate, as a laptop's
uplink is shared by every machine of a fleet (benchmark code, not the product's).

Each pipe reads at most ``PACKET`` bytes, books them on the ``Link`` (a queue in time:
the booking ends ``bytes ÷ rate`` after the link is next free) and sleeps until its booking
ends before it forwards them. Bookings are served in the order they are made, a packet at
a time, so concurrent transfers share the rate about evenly, as TCP flows through one
bottleneck do. A ``Link`` of rate None forwards at once and only counts.

    python scripts/link_proxy.py --listen 8001 --upstream 8000 --mbit 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

PACKET = 16_384
"""Bytes per booking: 6.6 ms at 20 Mbit/s, so a hundred transfers interleave finely."""


@dataclass
class Link:
    """The capped link's timetable: ``book`` returns how long ``size`` bytes wait for it."""

    mbit: float | None
    clock: Callable[[], float] = time.monotonic
    free_at: float = 0.0
    down: int = 0  # bytes coordinator → machines
    up: int = 0  # bytes machines → coordinator
    busy: float = field(default=0.0)  # seconds the link spent sending

    def book(self, size: int, *, downstream: bool) -> float:
        if downstream:
            self.down += size
        else:
            self.up += size
        if not self.mbit:
            return 0.0
        now = self.clock()
        seconds = size * 8 / (self.mbit * 1e6)
        self.free_at = max(now, self.free_at) + seconds
        self.busy += seconds
        return self.free_at - now


async def _pipe(
    link: Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, downstream: bool
) -> None:
    try:
        while data := await reader.read(PACKET):
            wait = link.book(len(data), downstream=downstream)
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def serve(link: Link, listen: int, upstream: int, ready: Callable[[int], None]) -> None:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", upstream)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(
            _pipe(link, client_r, server_w, downstream=False),
            _pipe(link, server_r, client_w, downstream=True),
        )

    server = await asyncio.start_server(handle, "127.0.0.1", listen, backlog=1024)
    ready(server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=int, default=0)
    parser.add_argument("--upstream", type=int, required=True)
    parser.add_argument("--mbit", type=float, default=0.0, help="the cap; 0: none (count only)")
    parser.add_argument("--stats", help="write 'down up busy' bytes and seconds here on exit")
    args = parser.parse_args()
    link = Link(args.mbit or None)
    try:
        asyncio.run(serve(link, args.listen, args.upstream, lambda p: print(p, flush=True)))
    except KeyboardInterrupt:
        pass
    finally:
        if args.stats:
            with open(args.stats, "w") as out:
                out.write(f"{link.down} {link.up} {link.busy:.3f}\n")


if __name__ == "__main__":
    main()
