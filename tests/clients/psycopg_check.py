"""psycopg 3 through pgsluice's transaction mode with prepare_threshold=0 (every statement is
a named prepared statement), 50 concurrent connections, pipeline mode with an error in the
middle, every value checked. Exits non-zero on the first wrong result."""
import asyncio
import os
import sys

import psycopg
from psycopg import errors

URL = os.environ["PGSLUICE_URL"]
CLIENTS = 50


async def client(n: int) -> int:
    checks = 0
    async with await psycopg.AsyncConnection.connect(URL, prepare_threshold=0, autocommit=True) as conn:
        for rnd in range(10):
            for j in range(5):
                add = (n % 5) * 100 + j
                cur = await conn.execute(f"SELECT %s::int + {add}, %s::text", (rnd, f"c{n}"))
                row = await cur.fetchone()
                assert row == (rnd + add, f"c{n}"), row
                checks += 1
            async with conn.transaction():
                await conn.execute("INSERT INTO driver_rows (client, round, who) VALUES (%s, %s, 'psycopg')", (n, rnd))
                cur = await conn.execute("SELECT count(*) FROM driver_rows WHERE client = %s AND who = 'psycopg'", (n,))
                assert (await cur.fetchone())[0] == rnd + 1
                checks += 1
        # Pipeline mode: three statements, the middle one fails; the ones after it in the
        # same sync are skipped, later ones run.
        try:
            async with conn.pipeline() as p:
                c1 = await conn.execute("SELECT %s::int * 2", (n,))
                await conn.execute("SELECT 1 / 0")
                await conn.execute("SELECT 3")
                await p.sync()
            raise AssertionError("division by zero must surface")
        except errors.DivisionByZero:
            checks += 1
        assert (await c1.fetchone()) == (n * 2,)
        async with conn.pipeline():
            curs = [await conn.execute("SELECT %s::int + %s::int", (n, k)) for k in range(20)]
        for k, c in enumerate(curs):
            assert (await c.fetchone()) == (n + k,)
        checks += 21
    return checks


async def main() -> None:
    results = await asyncio.gather(*(client(n) for n in range(CLIENTS)))
    print(f"psycopg ok: {CLIENTS} clients, {sum(results)} checks")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception as e:  # noqa: BLE001
        print(f"psycopg FAILED: {e!r}", file=sys.stderr)
        sys.exit(1)
