import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createServer, type AddressInfo } from 'node:net';
import { promisify } from 'node:util';
import { stringify } from 'yaml';
import mqtt from 'mqtt';
import { describe, expect, it } from 'vitest';
import { makeCa } from '../helpers/certs.js';
import { kafkaBrokers, startTestGateway, testConfig, uniqueName } from '../helpers/gateway.js';
import { waitForTopic } from '../helpers/kafka.js';
import { CLI } from '../helpers/process.js';
import { useCleanups, useTmpDirs } from '../helpers/tmp.js';

const exec = promisify(execFile);

async function run(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await exec(process.execPath, [CLI, ...args], { timeout: 60_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

describe('edgebridge CLI', () => {
  const tmp = useTmpDirs();
  const cleanup = useCleanups();

  it('--help lists the commands', async () => {
    const { code, stdout } = await run(['--help']);
    expect(code).toBe(0);
    for (const cmd of ['start', 'consume', 'check-config']) expect(stdout).toContain(cmd);
  });

  it('check-config prints the shipped config with defaults filled in', async () => {
    const { code, stdout } = await run(['check-config', '--print', '--config', 'config/edgebridge.yaml']);
    expect(code).toBe(0);
    expect(stdout).toContain('id: gw-site-1');
    expect(stdout).toContain('synchronous: full');
    expect(stdout).toContain('batchMaxRecords: 5000');
    expect(stdout).toContain('checkpointTopic: edgebridge.checkpoints');
  });

  it('check-config reads the files the config names: a missing password file or a TLS key that does not match its certificate is named', async () => {
    const dir = tmp();
    const ca = makeCa(dir, 'cli');
    const server = ca.issue('gateway', 'server');
    const other = ca.issue('other', 'server');
    const write = (mqtt: Record<string, unknown>): string => {
      const file = join(dir, 'c.yaml');
      writeFileSync(file, stringify({ ...testConfig({ dir, topic: 't', brokers: ['127.0.0.1:9092'] }), mqtt: { port: 1883, ...mqtt } }));
      return file;
    };
    const missing = await run(['check-config', '--config', write({ auth: { passwordFile: join(dir, 'nope') } })]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain('EB_ERR_AUTH_FILE');
    expect(missing.stderr).toContain(join(dir, 'nope'));
    const mismatched = await run(['check-config', '--config', write({ tls: { certFile: server.certFile, keyFile: other.keyFile } })]);
    expect(mismatched.code).toBe(2);
    expect(mismatched.stderr).toContain('EB_ERR_CONFIG_FILE');
    expect(mismatched.stderr).toContain('mqtt.tls.keyFile');
    expect((await run(['check-config', '--config', write({ tls: server })])).code).toBe(0);
  });

  it('start refuses an invalid config with exit code 2 and the key path', async () => {
    const file = join(tmp(), 'bad.yaml');
    writeFileSync(file, 'gateway: { id: gw }\nmqtt: { port: 99999, colour: red }\nkafka: { brokers: [] }\nstorage: { dir: ./d }\nroutes: []\n');
    const { code, stderr } = await run(['start', '--config', file]);
    expect(code).toBe(2);
    expect(stderr).toContain('EB_ERR_CONFIG_INVALID');
    expect(stderr).toContain('mqtt.port');
    expect(stderr).toContain('unknown key mqtt.colour');
    expect(stderr).toContain('kafka.brokers');
    const missing = await run(['start', '--config', join(tmp(), 'nope.yaml')]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain('EB_ERR_CONFIG_READ');
  });

  it('start fails with EB_ERR_INGRESS_LISTEN when the MQTT port is taken, and leaves nothing behind', async () => {
    const blocker = createServer();
    await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', () => r()));
    const port = (blocker.address() as AddressInfo).port;
    try {
      const dir = tmp();
      const file = join(dir, 'busy.yaml');
      writeFileSync(
        file,
        stringify({ ...testConfig({ dir: join(dir, 'data'), topic: 'iot.busy' }), mqtt: { host: '127.0.0.1', port } }),
      );
      const { code, stderr } = await run(['start', '--config', file]);
      expect(code).toBe(1);
      expect(stderr).toContain('EB_ERR_INGRESS_LISTEN');
      expect(stderr).toContain(`127.0.0.1:${port}`);
    } finally {
      blocker.close();
    }
  });

  it('a second gateway on the same storage.dir is refused with EB_ERR_LOG_LOCKED', async () => {
    const dir = tmp();
    const running = await startTestGateway({ dir: join(dir, 'data'), topic: 'iot.locked' });
    cleanup(() => running.close());
    const file = join(dir, 'second.yaml');
    writeFileSync(file, stringify(testConfig({ dir: join(dir, 'data'), topic: 'iot.locked' })));
    const { code, stderr } = await run(['start', '--config', file]);
    expect(code).toBe(1);
    expect(stderr).toContain('EB_ERR_LOG_LOCKED');
    expect(stderr).toContain(join(dir, 'data'));
    expect(running.status().forwarder).not.toBe('fenced');
  });

  it('the Kafka launcher names what to install when java and mvn are missing', async () => {
    const script = join(import.meta.dirname, '..', '..', 'scripts', 'kafka.mjs');
    const result = await exec(process.execPath, [script, 'jars'], { env: { PATH: '/nonexistent' } }).then(
      () => ({ code: 0, stderr: '' }),
      (err: { code: number; stderr: string }) => err,
    );
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('needs java and mvn (Java 17+ and Maven)');
    expect(result.stderr).toContain('apt-get install -y openjdk-17-jre-headless maven');
    expect(result.stderr).toContain('KAFKA_BROKERS');
  });

  it('consume prints key, partition, offset and value of what the gateway forwarded', async () => {
    const topic = uniqueName('iot.cli');
    const gw = await startTestGateway({ dir: tmp(), topic });
    cleanup(() => gw.close());
    const client = await mqtt.connectAsync(gw.url, { clientId: 'cli-pub' });
    for (let i = 1; i <= 3; i++) await client.publishAsync(`devices/cli-dev/telemetry`, `{"seq":${i}}`, { qos: 1 });
    await client.endAsync();
    await waitForTopic(kafkaBrokers(), topic);
    const { code, stdout } = await run([
      'consume', '--topic', topic, '--from-beginning', '--brokers', kafkaBrokers().join(','), '--max-messages', '3',
    ]);
    expect(code).toBe(0);
    const lines = stdout.trim().split('\n');
    expect(lines).toHaveLength(3);
    lines.forEach((line, i) => {
      expect(line).toMatch(new RegExp(`^cli-dev\\tpartition=\\d\\toffset=${i}\\t\\{"seq":${i + 1}\\}$`));
    });
  });
});
