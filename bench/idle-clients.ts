// Idle devices: `count` MQTT connections (client ids `${prefix}-N`, keepalive 60 s) that publish
// nothing, held by one process. Prints `connected N` once all are up, `lost N` if the broker
// closes any; runs until SIGTERM.
import mqtt, { type MqttClient } from 'mqtt';

const args = JSON.parse(process.argv[2] ?? '{}') as { url: string; count: number; prefix: string; concurrency?: number };
const clients: MqttClient[] = [];
let lost = 0;
const concurrency = args.concurrency ?? 50;
for (let i = 0; i < args.count; i += concurrency) {
  const batch = await Promise.all(
    Array.from({ length: Math.min(concurrency, args.count - i) }, (_, k) =>
      mqtt.connectAsync(args.url, { clientId: `${args.prefix}-${i + k}`, clean: true, reconnectPeriod: 0, keepalive: 60 }),
    ),
  );
  for (const c of batch) {
    c.once('close', () => process.stdout.write(`lost ${++lost}\n`));
    clients.push(c);
  }
}
process.stdout.write(`connected ${clients.length}\n`);
const stop = (): void => {
  void Promise.all(clients.map((c) => c.endAsync(true))).finally(() => process.exit(0));
  setTimeout(() => process.exit(0), 3000).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
setInterval(() => undefined, 1 << 30);
