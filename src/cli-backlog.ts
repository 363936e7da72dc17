/**
 * `edgebridge backlog`: what waits to be forwarded, per device, read from the commit log itself
 * (read-only, while the gateway runs or not): totals, then the devices with the most records.
 */
import { join, resolve } from 'node:path';
import { Command, InvalidArgumentError, Option } from 'commander';
import { formatAge, formatBytes, formatCount, formatTable } from './cli-format.js';
import { loadConfig } from './config/load.js';
import { EdgebridgeError, describeError } from './errors.js';
import { DEFAULT_BACKLOG_LIMIT, openLogForReading, readBacklog, type BacklogSummary } from './log/backlog.js';
import { DB_FILE } from './log/database.js';

function limitValue(value: string): number {
  const n = Number(value);
  if (!/^[0-9]+$/.test(value) || !Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError('must be a positive integer');
  return n;
}

/** The summary as text: totals, then one row per device of `top`. */
export function formatBacklog(summary: BacklogSummary, file: string, device?: string): string {
  const age = (receivedAt: number): string => formatAge((summary.readAt - receivedAt) / 1000);
  const totals = formatTable([
    ['log', `${file} (forwarded through offset ${summary.position})`],
    ['records', formatCount(summary.records)],
    ['bytes', formatBytes(summary.bytes)],
    ['oldest', summary.oldestReceivedAt === undefined ? '-' : `${age(summary.oldestReceivedAt)} ago`],
    ['devices', formatCount(summary.devices)],
  ]);
  if (device !== undefined && summary.top.length === 0) return `${totals}\nno backlog for device ${device}\n`;
  if (summary.top.length === 0) return totals;
  const table = formatTable(
    [
      ['DEVICE', 'RECORDS', 'BYTES', 'OLDEST'],
      ...summary.top.map((d) => [d.deviceId, formatCount(d.records), formatBytes(d.bytes), age(d.oldestReceivedAt)]),
    ],
    [1, 2, 3],
  );
  const more = device === undefined && summary.devices > summary.top.length ? `(${summary.top.length} of ${summary.devices} devices: --limit N for more)\n` : '';
  return `${totals}\n${table}${more}`;
}

/** Adds `edgebridge backlog` to the CLI. */
export function registerBacklogCommand(program: Command, defaultConfig: string): Command {
  return program
    .command('backlog')
    .description('records not yet forwarded to Kafka, per device, read from the commit log (also while the gateway runs)')
    .option('-c, --config <file>', 'YAML config file: the log is in its storage.dir (env EDGEBRIDGE_CONFIG)', defaultConfig)
    .option('--dir <dir>', 'storage.dir to read instead of the config\'s')
    .option('--device <id>', 'only this device in the table (the totals stay the whole backlog)')
    .option('--limit <n>', `at most this many devices in the table (default ${DEFAULT_BACKLOG_LIMIT})`, limitValue)
    .addOption(new Option('--json', 'print the summary as JSON (times in ms since the epoch)').default(false))
    .action((opts: { config: string; dir?: string; device?: string; limit?: number; json: boolean }) => {
      try {
        const dir = opts.dir ?? loadConfig(opts.config).storage.dir;
        const db = openLogForReading(dir);
        let summary: BacklogSummary;
        try {
          summary = readBacklog(db, {
            ...(opts.device === undefined ? {} : { device: opts.device }),
            ...(opts.limit === undefined ? {} : { limit: opts.limit }),
          });
        } finally {
          db.close();
        }
        process.stdout.write(opts.json ? `${JSON.stringify(summary, null, 2)}\n` : formatBacklog(summary, join(resolve(dir), DB_FILE), opts.device));
      } catch (err) {
        const code = err instanceof EdgebridgeError ? err.code : 'EB_ERR_UNEXPECTED';
        process.stderr.write(`edgebridge: ${code}: ${describeError(err)}\n`);
        process.exit(err instanceof EdgebridgeError && code.startsWith('EB_ERR_CONFIG') ? 2 : 1);
      }
    });
}
