#!/usr/bin/env node
import { Command, InvalidArgumentError, Option } from 'commander';
import { runFleet, type FleetProtocol } from './fleet.js';

function positive(value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError('must be a positive number');
  return n;
}

const program = new Command('firmware-sim')
  .description('simulated sensor fleet: QoS 1 JSON readings over MQTT (3.1.1 or 5) with persistent sessions and retransmits')
  .option('-d, --devices <n>', 'number of devices', positive, 10)
  .option('-r, --rate <n>', 'messages per second per device', positive, 1)
  .option('--duration <seconds>', 'publish for this long (default: until --count or Ctrl-C)', positive)
  .option('-n, --count <n>', 'messages per device, then stop', positive)
  .option('-u, --url <url>', 'broker URL', 'mqtt://127.0.0.1:1883')
  .option('-q, --qos <0|1|2>', 'QoS of the publishes', (v) => {
    if (!['0', '1', '2'].includes(v)) throw new InvalidArgumentError('must be 0, 1 or 2');
    return Number(v) as 0 | 1 | 2;
  }, 1 as 0 | 1 | 2)
  .addOption(
    new Option('-V, --mqtt-version <3.1.1|5|mixed>', 'MQTT protocol of the devices (mixed: every other device speaks MQTT 5)')
      .argParser((v): FleetProtocol => {
        const versions: Record<string, FleetProtocol> = { '3.1.1': 4, '4': 4, mqttv311: 4, '5': 5, mqttv5: 5, mixed: 'mixed' };
        const version = versions[v];
        if (version === undefined) throw new InvalidArgumentError('must be 3.1.1, 5 or mixed');
        return version;
      })
      .default(4 as FleetProtocol, '3.1.1'),
  )
  .option('--prefix <prefix>', 'device ID prefix', 'dev')
  .option('--topic <template>', 'topic template; {deviceId} is replaced', 'devices/{deviceId}/telemetry')
  .option('--payload-bytes <n>', 'pad each reading to about this size', positive)
  .option('--quiet', 'no progress lines on stderr', false)
  .action(
    async (opts: {
      devices: number;
      rate: number;
      duration?: number;
      count?: number;
      url: string;
      qos: 0 | 1 | 2;
      mqttVersion: FleetProtocol;
      prefix: string;
      topic: string;
      payloadBytes?: number;
      quiet: boolean;
    }) => {
      const abort = new AbortController();
      process.once('SIGINT', () => abort.abort());
      process.once('SIGTERM', () => abort.abort());
      const result = await runFleet({
        url: opts.url,
        devices: opts.devices,
        rate: opts.rate,
        qos: opts.qos,
        protocolVersion: opts.mqttVersion,
        prefix: opts.prefix,
        topicTemplate: opts.topic,
        signal: abort.signal,
        ...(opts.duration === undefined ? {} : { durationSec: opts.duration }),
        ...(opts.count === undefined ? {} : { count: opts.count }),
        ...(opts.payloadBytes === undefined ? {} : { payloadBytes: opts.payloadBytes }),
        ...(opts.quiet
          ? {}
          : {
              onProgress: (s) =>
                process.stderr.write(
                  `published=${s.published} acked=${s.acked}${s.refused > 0 ? ` refused=${s.refused}` : ''} connected=${s.connected} reconnects=${s.reconnects}\n`,
                ),
            }),
      });
      const { devices, ...summary } = result;
      // Which readings MQTT 5 devices had refused (reason code >= 0x80): not delivered, not resent.
      const refusedReadings = devices.flatMap((d) =>
        [...d.refusedSeqs].map(([seq, reasonCode]) => ({ deviceId: d.deviceId, seq, reasonCode })),
      );
      const listed = refusedReadings.slice(0, 100);
      process.stdout.write(
        `${JSON.stringify({
          ...summary,
          devices: devices.length,
          ...(refusedReadings.length > 0
            ? { refusedReadings: listed, ...(listed.length < refusedReadings.length ? { refusedReadingsNotListed: refusedReadings.length - listed.length } : {}) }
            : {}),
        })}\n`,
      );
      process.exit(0);
    },
  );

await program.parseAsync(process.argv);
