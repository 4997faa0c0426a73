#!/usr/bin/env python3
"""Client fleets for benches/clients.sh (asyncpg, md5 as user bench).

  clients.py idle HOST PORT DB N    open N connections, each runs one query, then hold them
                                    until stdin closes; prints "ready N SECONDS" when all are up
  clients.py storm HOST PORT DB N   N clients connect at once, each runs one query and leaves;
                                    prints one JSON line: ok, errors, seconds, p50/p99 ms
"""
import asyncio
import json
import sys
import time

import asyncpg


async def one(host, port, db):
    c = await asyncpg.connect(host=host, port=port, user="bench", password="bench",
                              database=db, ssl=False, statement_cache_size=0, timeout=60)
    assert await c.fetchval("SELECT 1") == 1
    return c


async def idle(host, port, db, n):
    started = time.monotonic()
    sem = asyncio.Semaphore(100)  # a steady connect rate, not a storm

    async def opened():
        async with sem:
            return await one(host, port, db)

    conns = await asyncio.gather(*(opened() for _ in range(n)))
    print(f"ready {len(conns)} {time.monotonic() - started:.1f}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await asyncio.gather(*(c.close() for c in conns))


async def storm(host, port, db, n):
    times, errors = [], {}
    gate = asyncio.Event()

    async def client():
        await gate.wait()
        t = time.monotonic()
        try:
            c = await one(host, port, db)
            await c.close()
            times.append(time.monotonic() - t)
        except Exception as e:  # counted and reported, never hidden
            key = getattr(e, "sqlstate", None) or type(e).__name__
            errors[key] = errors.get(key, 0) + 1

    tasks = [asyncio.create_task(client()) for _ in range(n)]
    await asyncio.sleep(0.1)
    started = time.monotonic()
    gate.set()
    await asyncio.gather(*tasks)
    wall = time.monotonic() - started
    times.sort()
    pct = lambda p: round(times[min(len(times) - 1, int(len(times) * p))] * 1000, 1) if times else None
    print(json.dumps({"clients": n, "ok": len(times), "errors": errors, "seconds": round(wall, 2),
                      "p50_ms": pct(0.5), "p99_ms": pct(0.99)}), flush=True)


if __name__ == "__main__":
    mode, host, port, db, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
    asyncio.run({"idle": idle, "storm": storm}[mode](host, port, db, n))
