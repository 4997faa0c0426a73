// node-postgres through pgsluice's transaction mode: 50 clients, named prepared statements
// ({ name, text }) reused across transactions, an error in a transaction, every value checked.
'use strict';
const { Client } = require('pg');

const URL = process.env.PGSLUICE_URL;
const CLIENTS = 50;

function assertEq(a, b, what) {
  if (JSON.stringify(a) !== JSON.stringify(b)) {
    throw new Error(`${what}: got ${JSON.stringify(a)}, want ${JSON.stringify(b)}`);
  }
}

async function client(n) {
  const c = new Client({ connectionString: URL });
  await c.connect();
  let checks = 0;
  try {
    for (let round = 0; round < 10; round++) {
      for (let j = 0; j < 5; j++) {
        const add = (n % 5) * 10 + j;
        const r = await c.query({ name: `add_${add}`, text: `SELECT $1::int + ${add} AS v`, values: [round] });
        assertEq(r.rows[0].v, round + add, 'named statement result');
        checks++;
      }
      await c.query('BEGIN');
      await c.query({ name: 'ins', text: "INSERT INTO driver_rows (client, round, who) VALUES ($1, $2, 'node')", values: [n, round] });
      const cnt = await c.query({ name: 'cnt', text: "SELECT count(*)::int AS n FROM driver_rows WHERE client = $1 AND who = 'node'", values: [n] });
      assertEq(cnt.rows[0].n, round + 1, 'rows inside the transaction');
      await c.query('COMMIT');
      checks++;
    }
    await c.query('BEGIN');
    try {
      await c.query({ name: 'bad', text: 'SELECT 1 / $1::int', values: [0] });
      throw new Error('division by zero must fail');
    } catch (e) {
      assertEq(e.code, '22012', 'SQLSTATE');
    }
    await c.query('ROLLBACK');
    const after = await c.query({ name: 'add_0', text: 'SELECT $1::int + 0 AS v', values: [7] });
    assertEq(after.rows[0].v, 7, 'usable after the error');
    checks += 2;
  } finally {
    await c.end();
  }
  return checks;
}

(async () => {
  const all = await Promise.all(Array.from({ length: CLIENTS }, (_, n) => client(n)));
  console.log(`node-postgres ok: ${CLIENTS} clients, ${all.reduce((a, b) => a + b, 0)} checks`);
})().catch((e) => {
  console.error(`node-postgres FAILED: ${e.stack || e}`);
  process.exit(1);
});
