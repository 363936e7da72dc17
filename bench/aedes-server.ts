// Plain aedes (the broker library edgebridge builds on, without commit log or forwarding) as its
// own process: a baseline for ingest. Prints `ready <port>`; answers `count` on stdin with
// `{"received":N}` (client publishes seen), to check a generator's count.
import { createServer } from 'node:net';
import { createInterface } from 'node:readline';
import { Aedes } from 'aedes';

const { port = 0 } = JSON.parse(process.argv[2] ?? '{}') as { port?: number };
const broker = await Aedes.createBroker({});
let received = 0;
broker.on('publish', (_packet, client) => {
  if (client) received++;
});
const server = createServer(broker.handle);
await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', () => resolve()));
process.stdout.write(`ready ${(server.address() as { port: number }).port}\n`);
createInterface({ input: process.stdin }).on('line', (line) => {
  if (line.trim() === 'count') process.stdout.write(`${JSON.stringify({ received })}\n`);
});
const stop = (): void => {
  broker.close(() => server.close(() => process.exit(0)));
  setTimeout(() => process.exit(0), 2000).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
