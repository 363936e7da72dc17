// The edgebridge command (start, check-config, consume, passwd, status, backlog); cli.ts loads it.
import { readFileSync } from 'node:fs';
import { Command, InvalidArgumentError, Option } from 'commander';
import { loadConfig } from './config/load.js';
import { configSummary, effectiveConfigYaml } from './config/show.js';
import { registerBacklogCommand } from './cli-backlog.js';
import { registerPasswdCommand } from './cli-passwd.js';
import { registerStatusCommand } from './cli-status.js';
import { EdgebridgeError, describeError } from './errors.js';
import { readKafkaSecurity } from './forward/kafka-security.js';
import { Gateway, checkConfigFiles } from './gateway.js';
import { createLogger } from './logger.js';

const DEFAULT_CONFIG = process.env.EDGEBRIDGE_CONFIG ?? 'config/edgebridge.yaml';

function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError('must be a positive integer');
  return n;
}

function fail(err: unknown): never {
  const code = err instanceof EdgebridgeError ? err.code : 'EB_ERR_UNEXPECTED';
  process.stderr.write(`edgebridge: ${code}: ${describeError(err)}\n`);
  // 2: the config (or a file it names) must be fixed; 1: anything else.
  process.exit(err instanceof EdgebridgeError && (code.startsWith('EB_ERR_CONFIG') || code === 'EB_ERR_AUTH_FILE') ? 2 : 1);
}

const program = new Command('edgebridge')
  .description('Edge IoT telemetry gateway: MQTT in, durable SQLite commit log, Kafka out')
  .version(packageVersion());

program
  .command('start')
  .description('run the gateway: MQTT listener, commit log and Kafka forwarder')
  .option('-c, --config <file>', 'YAML config file (env EDGEBRIDGE_CONFIG)', DEFAULT_CONFIG)
  .action(async (opts: { config: string }) => {
    // SIGHUP's default would kill the process: ignored until the gateway can reload (below).
    const ignoreHup = (): void => undefined;
    process.on('SIGHUP', ignoreHup);
    let gateway: Gateway;
    try {
      const config = loadConfig(opts.config);
      // the gateway's own logger: its problems are also listed on the status page
      gateway = await Gateway.start(config);
    } catch (err) {
      fail(err);
    }
    let signals = 0;
    const stop = (signal: NodeJS.Signals): void => {
      if (++signals > 1) {
        gateway.logger.warn({ signal }, 'second signal: exiting without a clean shutdown');
        process.exit(1);
      }
      gateway.logger.info({ signal }, 'shutting down');
      gateway.close().then(
        () => process.exit(0),
        (err: unknown) => {
          gateway.logger.error({ err: describeError(err) }, 'shutdown failed');
          process.exit(1);
        },
      );
    };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
    // `kill -HUP` (systemctl reload): the config file is read again (with the same environment
    // overrides) and routes, limits and log.level applied; the password and ACL files are re-read.
    process.off('SIGHUP', ignoreHup);
    process.on('SIGHUP', () => gateway.reload(() => loadConfig(opts.config)));
  });

program
  .command('check-config')
  .description('validate a config file and the files it names, and summarize it (--print: the whole effective config)')
  .option('-c, --config <file>', 'YAML config file (env EDGEBRIDGE_CONFIG)', DEFAULT_CONFIG)
  .option('--print', 'print the effective config as YAML: defaults filled in, environment overrides applied and marked, secrets masked', false)
  .action((opts: { config: string; print: boolean }) => {
    try {
      const config = loadConfig(opts.config);
      checkConfigFiles(config);
      process.stdout.write(opts.print ? effectiveConfigYaml(config, process.env) : configSummary(opts.config, config, process.env));
    } catch (err) {
      fail(err);
    }
  });

program
  .command('consume')
  .description('print committed records of a Kafka topic (read_committed, with a consumer group)')
  .requiredOption('-t, --topic <topic>', 'Kafka topic to read')
  .option('-g, --group <group>', 'consumer group id (default: a new group per run)')
  .option('--from-beginning', 'start at the earliest offset when the group has no committed offset', false)
  .option('-b, --brokers <list>', 'comma-separated host:port list (default: kafka.brokers of --config)')
  .option('-c, --config <file>', 'take the brokers, kafka.ssl and kafka.sasl from this config file', DEFAULT_CONFIG)
  .option('-n, --max-messages <n>', 'exit after this many records', positiveInt)
  .addOption(new Option('--json', 'one JSON object per record, with headers and timestamp').default(false))
  .action(
    async (opts: {
      topic: string;
      group?: string;
      fromBeginning: boolean;
      brokers?: string;
      config: string;
      maxMessages?: number;
      json: boolean;
    }, command: Command) => {
      try {
        // the config (brokers, TLS, SASL) unless --brokers is given without an explicit --config
        const config = !opts.brokers || command.getOptionValueSource('config') !== 'default' ? loadConfig(opts.config) : undefined;
        const brokers = opts.brokers
          ? opts.brokers
              .split(',')
              .map((b) => b.trim())
              .filter((b) => b.length > 0)
          : [...config!.kafka.brokers];
        const abort = new AbortController();
        process.once('SIGINT', () => abort.abort());
        process.once('SIGTERM', () => abort.abort());
        // kafkajs is loaded by this command only, not by `start` (whose Kafka client is in its worker)
        const { consume } = await import('./consume.js');
        await consume({
          brokers,
          topic: opts.topic,
          fromBeginning: opts.fromBeginning,
          json: opts.json,
          logger: createLogger(process.env.EDGEBRIDGE_LOG_LEVEL ?? 'warn', 'edgebridge-consume'),
          signal: abort.signal,
          ...(config === undefined ? {} : { security: readKafkaSecurity(config.kafka) }),
          ...(opts.group === undefined ? {} : { group: opts.group }),
          ...(opts.maxMessages === undefined ? {} : { maxMessages: opts.maxMessages }),
        });
        process.exit(0);
      } catch (err) {
        fail(err);
      }
    },
  );

registerPasswdCommand(program);
registerStatusCommand(program, DEFAULT_CONFIG);
registerBacklogCommand(program, DEFAULT_CONFIG);

await program.parseAsync(process.argv);
