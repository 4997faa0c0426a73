"""asyncpg through pgsluice's transaction mode: 50 connections, default statement cache,
many distinct statements reused across transactions, executemany pipelines with an error in
the middle, and every value checked. Exits non-zero on the first wrong result."""
import asyncio
import os
import sys

import asyncpg

URL = os.environ["PGSLUICE_URL"]
CLIENTS = 50


async def client(n: int) -> int:
    conn = await asyncpg.connect(URL)  # statement_cache_size defaults to 100: named statements
    checks = 0
    try:
        for rnd in range(12):
            # Distinct statements per client group; each reused on later rounds.
            for j in range(6):
                add = (n % 7) * 10 + j
                v = await conn.fetchval(f"SELECT $1::int + {add}", rnd)
                assert v == rnd + add, (n, rnd, j, v)
                checks += 1
            async with conn.transaction():
                txid = await conn.fetchval("SELECT txid_current()")
                await conn.execute("INSERT INTO driver_rows (client, round, who) VALUES ($1, $2, 'asyncpg')", n, rnd)
                again = await conn.fetchval("SELECT txid_current()")
                assert txid == again, "one transaction, one server"
                rows = await conn.fetch("SELECT round FROM driver_rows WHERE client = $1 AND who = 'asyncpg' ORDER BY round", n)
                assert [r["round"] for r in rows] == list(range(rnd + 1)), rows
                checks += 2
        # A pipeline (executemany) whose middle row fails: nothing of it is applied.
        try:
            await conn.executemany(
                "INSERT INTO driver_strict (client, v) VALUES ($1, $2)",
                [(n, 1), (n, 2), (n, -3), (n, 4)],
            )
            raise AssertionError("the CHECK violation must fail the batch")
        except asyncpg.CheckViolationError:
            checks += 1
        left = await conn.fetchval("SELECT count(*) FROM driver_strict WHERE client = $1", n)
        assert left == 0, left
        await conn.executemany("INSERT INTO driver_strict (client, v) VALUES ($1, $2)", [(n, i) for i in range(1, 21)])
        total = await conn.fetchval("SELECT sum(v) FROM driver_strict WHERE client = $1", n)
        assert total == 210, total
        checks += 2
    finally:
        await conn.close()
    return checks


async def main() -> None:
    setup = await asyncpg.connect(URL)
    await setup.execute("DROP TABLE IF EXISTS driver_strict; CREATE TABLE driver_strict (client int, v int CHECK (v > 0))")
    await setup.close()
    results = await asyncio.gather(*(client(n) for n in range(CLIENTS)))
    print(f"asyncpg ok: {CLIENTS} clients, {sum(results)} checks")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception as e:  # noqa: BLE001 - report any failure as a non-zero exit
        print(f"asyncpg FAILED: {e!r}", file=sys.stderr)
        sys.exit(1)
