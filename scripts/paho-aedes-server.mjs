#!/usr/bin/env node
// Plain aedes (the installed, patched version edgebridge builds on; no commit log, no ingress
// layer, default options) on 127.0.0.1:<port> for `npm run interop -- --aedes`: tells a failure
// that aedes has from one the gateway adds. Prints "ready <port>"; SIGTERM closes it.
import { createServer } from 'node:net';
import { Aedes } from 'aedes';

const port = Number(process.argv[2] ?? 0);
const broker = await Aedes.createBroker({});
const server = createServer(broker.handle);
server.listen(port, '127.0.0.1', () => process.stdout.write(`ready ${server.address().port}\n`));
const stop = () => {
  broker.close(() => server.close(() => process.exit(0)));
  setTimeout(() => process.exit(0), 2000).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
