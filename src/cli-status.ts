/**
 * `edgebridge status`: a running gateway's GET /status and GET /readyz as a table, for scripts
 * and SSH sessions. Exit code 0 when ready, 1 when not (the table still printed), 2 when the
 * admin endpoint cannot be reached or is not an edgebridge one.
 */
import type { BacklogDetail } from './admin/server.js';
import { Command, InvalidArgumentError, Option } from 'commander';
import { formatAge, formatBytes, formatCount, formatTable, labelOf } from './cli-format.js';
import { loadConfig } from './config/load.js';
import { EdgebridgeError, describeError } from './errors.js';
import type { GatewayStatus } from './status.js';

const TIMEOUT_MS = 5000;

/** /status as it came: the fields of this version, maybe some missing (older) or more (newer). */
export type StatusBody = Partial<GatewayStatus & { backlogDetail: BacklogDetail }> & Record<string, unknown>;

/** GET /readyz: its HTTP code and body ({status, reason, ...}). */
export interface Readiness {
  readonly code: number;
  readonly body: { readonly status?: string; readonly reason?: string } & Record<string, unknown>;
}

/** Fields the table shows in rows of their own; every other top-level field is listed after them. */
const SHOWN = new Set([
  'gatewayId', 'forwarder', 'forwarderError', 'logWritable', 'logError', 'backlog', 'backlogOldestAgeSeconds',
  'storageBytes', 'mqttClients', 'received', 'forwarded', 'duplicates', 'refused', 'droppedOverflow',
  'droppedExpired', 'recordsExpired', 'droppedRejected', 'deadLettered', 'holding', 'waiting', 'commands', 'mqtt',
  'startedAt', 'transactions', 'transactionsFailed', 'drain', 'devices', 'routes', 'errors', 'backlogDetail',
]);

function baseUrl(value: string): string {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new InvalidArgumentError('must be a URL like http://127.0.0.1:9464');
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new InvalidArgumentError('must be an http:// or https:// URL');
  return url.href.replace(/\/+$/, '');
}

/** The admin endpoint of a config: a wildcard bind address is reached on loopback. */
function configuredUrl(configFile: string): string {
  const { admin } = loadConfig(configFile);
  if (!admin.enabled) {
    throw new EdgebridgeError('EB_ERR_ADMIN_UNREACHABLE', `admin.enabled is false in ${configFile}: that gateway serves no status (give --url if another one does)`);
  }
  const host = admin.host === '0.0.0.0' ? '127.0.0.1' : admin.host === '::' ? '::1' : admin.host;
  return `http://${host.includes(':') ? `[${host}]` : host}:${admin.port}`;
}

function unreachable(url: string, err: unknown): EdgebridgeError {
  const cause = (err as { cause?: { code?: string; message?: string } }).cause;
  const why =
    (err as Error).name === 'TimeoutError'
      ? `no answer within ${TIMEOUT_MS / 1000} s`
      : cause?.code === 'ECONNREFUSED'
        ? 'ECONNREFUSED: is the gateway running? is admin.enabled true?'
        : cause?.code === 'ENOTFOUND'
          ? 'ENOTFOUND: no such host'
          : (cause?.message ?? describeError(err));
  return new EdgebridgeError('EB_ERR_ADMIN_UNREACHABLE', `cannot reach ${url} (${why})`, { cause: err });
}

async function getJson(url: string): Promise<{ code: number; body: unknown }> {
  let res: Response;
  let text: string;
  try {
    res = await fetch(url, { signal: AbortSignal.timeout(TIMEOUT_MS) });
    text = await res.text();
  } catch (err) {
    throw unreachable(url, err);
  }
  try {
    return { code: res.status, body: JSON.parse(text) as unknown };
  } catch {
    throw new EdgebridgeError('EB_ERR_ADMIN_UNREACHABLE', `${url} answered HTTP ${res.status} without JSON: is it an edgebridge admin endpoint?`);
  }
}

/** GET /status and /readyz of the admin endpoint at `base`. */
export async function fetchStatus(base: string): Promise<{ status: StatusBody; readiness: Readiness }> {
  const [status, readiness] = await Promise.all([getJson(`${base}/status`), getJson(`${base}/readyz`)]);
  const body = status.body as StatusBody | null;
  if (status.code !== 200 || typeof body !== 'object' || body === null || typeof body.gatewayId !== 'string') {
    throw new EdgebridgeError('EB_ERR_ADMIN_UNREACHABLE', `${base}/status answered HTTP ${status.code} without a gateway status: is it an edgebridge admin endpoint?`);
  }
  return { status: body, readiness: { code: readiness.code, body: (readiness.body ?? {}) as Readiness['body'] } };
}

/** A value of a field this version does not know: numbers, flags, text and flat objects of them. */
function genericValue(value: unknown): string | undefined {
  if (typeof value === 'number') return formatCount(value);
  if (typeof value === 'boolean') return value ? 'yes' : 'no';
  if (typeof value === 'string') return value === '' ? undefined : value;
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return undefined;
  const parts = Object.entries(value)
    .filter(([, v]) => v !== 0 && v !== '' && v !== false)
    .map(([k, v]) => [labelOf(k), genericValue(v)] as const)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k} ${v}`);
  return parts.length === 0 ? 'none' : parts.join(', ');
}

/** The status as label/value rows: known fields first, then any other top-level field. */
export function statusRows(s: StatusBody, readiness: Readiness): [string, string][] {
  const rows: [string, string][] = [['gateway', s.gatewayId ?? '?']];
  const r = readiness.body;
  rows.push([
    'ready',
    readiness.code === 200
      ? 'yes'
      : readiness.code === 503
        ? `no (${r.status ?? '?'}): ${r.reason ?? ''}`.replace(/: $/, '')
        : `unknown: GET /readyz answered HTTP ${readiness.code}`,
  ]);
  if (s.forwarder !== undefined) rows.push(['forwarder', s.forwarderError ? `${s.forwarder}: ${s.forwarderError}` : s.forwarder]);
  if (s.logWritable !== undefined) rows.push(['log', s.logWritable ? 'writable' : `not writable: ${s.logError ?? ''}`]);
  if (s.startedAt !== undefined) rows.push(['up', formatAge(Math.max(0, (Date.now() - s.startedAt) / 1000))]);
  if (s.backlog !== undefined) {
    const oldest = s.backlog > 0 && s.backlogOldestAgeSeconds !== undefined ? `, oldest ${formatAge(s.backlogOldestAgeSeconds)}` : '';
    const bytes = s.backlogDetail && s.backlog > 0 ? `, ${s.backlogDetail.estimated ? '~' : ''}${formatBytes(s.backlogDetail.bytes)}` : '';
    rows.push(['backlog', `${formatCount(s.backlog)} records${bytes}${oldest}`]);
    const top = s.backlogDetail?.topDevices ?? [];
    if (s.backlog > 0 && top.length > 0) {
      const more = s.backlogDetail!.devices > top.length ? `, … (${formatCount(s.backlogDetail!.devices)} devices)` : '';
      rows.push(['backlog by device', `${top.slice(0, 5).map((d) => `${d.deviceId} ${formatCount(d.records)}`).join(', ')}${more}`]);
    }
  }
  if (s.drain) {
    const d = s.drain;
    const pct = Math.floor((100 * d.done) / Math.max(1, d.total));
    rows.push(['draining', `${formatCount(d.done)} of ${formatCount(d.total)} (${pct}%), ${formatCount(d.ratePerSecond)}/s, ${d.etaSeconds === null ? 'not shrinking' : `about ${formatAge(d.etaSeconds)} to go`}`]);
  }
  if (s.devices) {
    const silent = s.devices.silentDevices.slice(0, 5).map((d) => d.deviceId);
    rows.push([
      'devices',
      `${formatCount(s.devices.active)} active, ${formatCount(s.devices.silent)} silent for more than ${formatAge(s.devices.silentAfterSeconds)}${silent.length > 0 ? ` (${silent.join(', ')}${s.devices.silent > silent.length ? ', …' : ''})` : ''}`,
    ]);
  }
  if (s.transactions !== undefined) rows.push(['kafka transactions', `${formatCount(s.transactions)} committed, ${formatCount(s.transactionsFailed ?? 0)} failed`]);
  if (s.storageBytes !== undefined) rows.push(['storage', formatBytes(s.storageBytes)]);
  if (s.holding) rows.push(['acks held', `yes: storage.maxBytes reached, ${formatCount(s.waiting ?? 0)} publishes waiting`]);
  for (const [key, label] of [
    ['mqttClients', 'mqtt clients'],
    ['received', 'received'],
    ['forwarded', 'forwarded'],
    ['duplicates', 'duplicates'],
    ['refused', 'refused'],
    ['deadLettered', 'dead-lettered'],
  ] as const) {
    const value = s[key];
    if (typeof value === 'number') rows.push([label, formatCount(value)]);
  }
  if (s.droppedOverflow !== undefined) {
    const drops = { overflow: s.droppedOverflow, expired: s.droppedExpired ?? 0, messageExpiry: s.recordsExpired ?? 0, rejected: s.droppedRejected ?? 0 };
    const total = drops.overflow + drops.expired + drops.messageExpiry + drops.rejected;
    rows.push(['dropped', total === 0 ? '0' : `${formatCount(total)} (${genericValue(drops)})`]);
  }
  if (s.mqtt !== undefined) rows.push(['mqtt refused', genericValue(s.mqtt) ?? 'none']);
  if (s.commands !== undefined) rows.push(['commands', genericValue(s.commands) ?? 'none']);
  const last = s.errors?.[0];
  if (last) rows.push(['last problem', `${formatAge(Math.max(0, (Date.now() - last.at) / 1000))} ago: ${last.code ? `${last.code} ` : ''}${last.message}${last.count > 1 ? ` (${last.count} times)` : ''}`]);
  for (const [key, value] of Object.entries(s)) {
    if (SHOWN.has(key)) continue;
    const text = genericValue(value);
    if (text !== undefined) rows.push([labelOf(key), text]);
  }
  return rows;
}

/** Adds `edgebridge status` to the CLI. */
export function registerStatusCommand(program: Command, defaultConfig: string): Command {
  return program
    .command('status')
    .description("a running gateway's status and readiness as a table (admin endpoint); exit 0 ready, 1 not ready, 2 unreachable")
    .option('--url <url>', 'admin endpoint (default: http://admin.host:admin.port of --config)', baseUrl)
    .option('-c, --config <file>', 'YAML config file whose admin endpoint to ask (env EDGEBRIDGE_CONFIG)', defaultConfig)
    .addOption(new Option('--json', 'print {status, readiness} as JSON').default(false))
    // a usage error is not "not ready" (1): scripts read 2 as "could not tell"
    .exitOverride((err) => process.exit(err.exitCode === 0 ? 0 : 2))
    .action(async (opts: { url?: string; config: string; json: boolean }) => {
      try {
        const base = opts.url ?? configuredUrl(opts.config);
        const { status, readiness } = await fetchStatus(base);
        process.stdout.write(
          opts.json ? `${JSON.stringify({ status, readiness: readiness.body }, null, 2)}\n` : formatTable(statusRows(status, readiness)),
        );
        process.exit(readiness.code === 200 ? 0 : 1);
      } catch (err) {
        const code = err instanceof EdgebridgeError ? err.code : 'EB_ERR_UNEXPECTED';
        process.stderr.write(`edgebridge: ${code}: ${describeError(err)}\n`);
        process.exit(2);
      }
    });
}
