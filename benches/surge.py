"""A closed-loop driver for benches/adaptive.sh's surge scenario: CLIENTS asyncpg connections
run one statement in a loop for DURATION seconds and count what the database finished in
time (errors such as statement_timeout's 57014 are counted, not fatal, unlike pgbench).

    python3 benches/surge.py DSN CLIENTS DURATION SQL_FILE

Prints one line: ok_tps errors p50_ms p99_ms (latencies of the statements that succeeded).
"""

import asyncio
import sys
import time

import asyncpg


async def worker(dsn, sql, stop, lat, errors):
    conn = await asyncpg.connect(dsn, statement_cache_size=0)
    try:
        while time.monotonic() < stop:
            t = time.monotonic()
            try:
                await conn.execute(sql)
                lat.append(time.monotonic() - t)
            except asyncpg.PostgresError:
                errors.append(1)
    finally:
        await conn.close()


async def main():
    dsn, clients, duration, path = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    sql = open(path).read()
    lat, errors = [], []
    start = time.monotonic()
    stop = start + duration
    await asyncio.gather(*(worker(dsn, sql, stop, lat, errors) for _ in range(clients)))
    elapsed = time.monotonic() - start
    lat.sort()
    pick = lambda q: lat[min(len(lat) - 1, int(len(lat) * q))] * 1000 if lat else 0.0
    print(f"{len(lat) / elapsed:.1f} {len(errors)} {pick(0.5):.1f} {pick(0.99):.1f}")


asyncio.run(main())
