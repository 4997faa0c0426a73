"""A closed-loop driver for benches/adaptive.sh's surge scenario: CLIENTS asyncpg connections
run one statement in a loop for DURATION seconds and count what the database finished in
time (errors such as statement_timeout's 57014 are counted, not fatal, unlike pgbench).

    python3 benches/surge.py DSN CLIENTS DURATION SQL_FILE

Prints one line: light_ok/s heavy_ok/s errors p50_ms p99_ms lost (statements finished in
time per second, of each kind; latencies of those; lost: connections closed under it,
reopened at once).
"""

import asyncio
import sys
import time

import asyncpg


async def worker(dsn, sql, stop, lat, heavy, errors, lost):
    conn = await asyncpg.connect(dsn, statement_cache_size=0)
    while time.monotonic() < stop:
        t = time.monotonic()
        try:
            # The light statement returns 0, the CPU-bound one its count.
            if await conn.fetchval(sql):
                heavy.append(1)
            lat.append(time.monotonic() - t)
        except asyncpg.PostgresError:
            errors.append(1)
        except (asyncpg.InterfaceError, ConnectionError, OSError):
            # A closed connection: an agent reconnects.
            lost.append(1)
            conn = await asyncpg.connect(dsn, statement_cache_size=0)
    await conn.close()


async def main():
    dsn, clients, duration, path = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    sql = open(path).read()
    lat, heavy, errors, lost = [], [], [], []
    start = time.monotonic()
    stop = start + duration
    await asyncio.gather(*(worker(dsn, sql, stop, lat, heavy, errors, lost) for _ in range(clients)))
    elapsed = time.monotonic() - start
    lat.sort()
    pick = lambda q: lat[min(len(lat) - 1, int(len(lat) * q))] * 1000 if lat else 0.0
    light = len(lat) - len(heavy)
    print(
        f"{light / elapsed:.1f} {len(heavy) / elapsed:.1f} {len(errors)} "
        f"{pick(0.5):.1f} {pick(0.99):.1f} {len(lost)}"
    )


asyncio.run(main())
