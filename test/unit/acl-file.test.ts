import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EdgebridgeError } from '../../src/errors.js';
import { AclFile } from '../../src/ingress/auth/acl-file.js';
import { mosquittoTool, startMosquitto, type MosquittoBroker } from '../helpers/mosquitto.js';
import { useTmpDirs } from '../helpers/tmp.js';

const anon = { clientId: 'anon-1' };
const alice = { username: 'alice', clientId: 'alice-1' };

function parseError(text: string): string {
  try {
    AclFile.parse(text, '/etc/acl');
  } catch (err) {
    expect(err).toBeInstanceOf(EdgebridgeError);
    expect((err as EdgebridgeError).code).toBe('EB_ERR_AUTH_FILE');
    return (err as EdgebridgeError).message;
  }
  throw new Error('expected a parse error');
}

describe('ACL file syntax (Mosquitto 2.0 aclfile__parse)', () => {
  const tmp = useTmpDirs();

  it('reads user sections, access words, topics with spaces, comments, blank lines and CRLF', () => {
    const acl = AclFile.parse(
      [
        '# comment in the first column',
        'topic public/#',
        '',
        '   topic read   spaced topic/x  ',
        'user bob smith ',
        'topic write bob/out\r',
        'user   carol',
        'topic deny a b',
        'user bob smith',
        'topic read more',
      ].join('\n'),
      '/etc/acl',
    );
    expect(acl.users()).toEqual(['bob smith', 'carol']);
    expect(acl.warnings).toEqual([]);
    expect(acl.check('write', 'public/x', anon)).toBe('allow'); // no access word: readwrite
    expect(acl.check('read', 'spaced topic/x', anon)).toBe('allow');
    expect(acl.check('write', 'spaced topic/x', anon)).toBe('none');
    expect(acl.check('write', 'bob/out', { username: 'bob smith', clientId: 'b' })).toBe('allow');
    expect(acl.check('read', 'more', { username: 'bob smith', clientId: 'b' })).toBe('allow'); // sections add up
    expect(acl.check('read', 'public/x', { username: 'bob smith', clientId: 'b' })).toBe('none'); // anonymous lines are for anonymous clients only
    expect(acl.check('read', 'a b', { username: 'carol', clientId: 'c' })).toBe('deny');
  });

  it('takes "topic read" as readwrite on the topic "read", as Mosquitto does, with a warning', () => {
    const acl = AclFile.parse('topic read\npattern write no/patterns/here\n', '/etc/acl');
    expect(acl.check('write', 'read', anon)).toBe('allow');
    expect(acl.warnings).toEqual([
      expect.stringMatching(/\/etc\/acl:1: "topic read" grants readwrite on the topic named "read"/),
      expect.stringMatching(/\/etc\/acl:2: pattern "no\/patterns\/here" contains neither %c nor %u/),
    ]);
  });

  it.each([
    ['topic foo bar', /acl:3: invalid access "foo"/],
    ['topic', /acl:3: "topic" without a topic/],
    ['pattern   ', /acl:3: "pattern" without a topic/],
    ['user', /acl:3: "user" without a user name/],
    ['user  \t  ', /acl:3: "user" without a user name/],
    ['  # indented comment', /acl:3: expected "user", "topic" or "pattern", found "#".*first column/],
    ['topic\tread\tx', /found "topic\tread\tx".*not tabs/],
    ['Topic read x', /found "Topic"/],
    ['\uFEFFtopic read x', /byte order mark/],
    ['topic read a/#/b', /acl:3: invalid topic "a\/#\/b": "#" must be a whole level/],
    ['topic read a/b#', /"#" must be a whole level/],
    ['topic read a+/b', /"\+" must be a whole level/],
    ['pattern read x/%c+', /"\+" must be a whole level/],
  ])('refuses %j naming file and line', (line, error) => {
    expect(parseError(`# first\n\n${line}\n`)).toMatch(error);
    expect(parseError(`# first\n\n${line}\n`)).toMatch(/^ACL file \/etc\/acl:3: /);
  });

  it('an unreadable file is EB_ERR_AUTH_FILE naming it', () => {
    const file = join(tmp(), 'missing');
    expect(() => AclFile.load(file)).toThrow(expect.objectContaining({ code: 'EB_ERR_AUTH_FILE', message: expect.stringContaining(file) }));
  });
});

describe('ACL evaluation (Mosquitto 2.0 mosquitto_acl_check_default)', () => {
  it('matches with MQTT wildcards: a/# also matches a; $ topics only by $ entries', () => {
    const acl = AclFile.parse('topic readwrite a/#\ntopic read +/x\ntopic read #\ntopic write $app/+\n', '/etc/acl');
    expect(acl.check('write', 'a', anon)).toBe('allow');
    expect(acl.check('write', 'a/b/c', anon)).toBe('allow');
    expect(acl.check('write', 'ab', anon)).toBe('none');
    expect(acl.check('read', 'ab', anon)).toBe('allow');
    expect(acl.check('read', '$SYS/broker/uptime', anon)).toBe('none');
    expect(acl.check('read', '$app/x', anon)).toBe('none');
    expect(acl.check('write', '$app/x', anon)).toBe('allow');
    expect(acl.check('write', 'a/+', anon)).toBe('deny'); // not a topic name
    expect(acl.check('write', '', anon)).toBe('deny');
  });

  it('deny lines win within a list; access words are respected', () => {
    const acl = AclFile.parse(['user alice', 'topic readwrite s/#', 'topic deny s/secret', 'topic read r/#'].join('\n'), '/etc/acl');
    expect(acl.check('read', 's/secret', alice)).toBe('deny');
    expect(acl.check('write', 's/secret', alice)).toBe('deny');
    expect(acl.check('read', 's/other', alice)).toBe('allow');
    expect(acl.check('read', 'r/x', alice)).toBe('allow');
    expect(acl.check('write', 'r/x', alice)).toBe('none');
  });

  it("a user's own lines are decided before pattern lines, deny patterns included (Mosquitto's order)", () => {
    const acl = AclFile.parse(['user alice', 'topic readwrite s/#', 'pattern deny s/%u/x', 'pattern read s/%u/#'].join('\n'), '/etc/acl');
    expect(acl.check('write', 's/alice/x', alice)).toBe('allow');
    expect(acl.check('write', 's/carol/x', { username: 'carol', clientId: 'c' })).toBe('deny');
    expect(acl.check('read', 's/carol/y', { username: 'carol', clientId: 'c' })).toBe('allow');
  });

  it('patterns: %c and %u substituted anywhere in the topic; %u lines skip anonymous clients', () => {
    const acl = AclFile.parse(['pattern write devices/%u/up', 'pattern read dev-%c/x', 'pattern readwrite %c/%u'].join('\n'), '/etc/acl');
    expect(acl.check('write', 'devices/alice/up', alice)).toBe('allow');
    expect(acl.check('write', 'devices/bob/up', alice)).toBe('none');
    expect(acl.check('read', 'dev-alice-1/x', alice)).toBe('allow');
    expect(acl.check('read', 'dev-anon-1/x', anon)).toBe('allow');
    expect(acl.check('write', 'anon-1/%u', anon)).toBe('none');
    expect(acl.check('write', 'alice-1/alice', alice)).toBe('allow');
  });

  it('with pattern lines, a username or client id containing + or # is denied what its own lines do not grant', () => {
    const acl = AclFile.parse(['user alice', 'topic write mine', 'pattern write devices/%c/up'].join('\n'), '/etc/acl');
    expect(acl.check('write', 'devices/a+b/up', { username: 'alice', clientId: 'a+b' })).toBe('deny');
    expect(acl.check('write', 'other', { username: 'alice', clientId: 'a#' })).toBe('deny');
    expect(acl.check('write', 'mine', { username: 'alice', clientId: 'a#' })).toBe('allow');
    expect(acl.check('write', 'x', { username: 'bo+b', clientId: 'b' })).toBe('deny');
    expect(AclFile.parse('user alice\ntopic write mine\n', 'f').check('write', 'x', { username: 'bo+b', clientId: 'b' })).toBe('none');
  });

  it('a client id or username containing / does not match the patterns that substitute it', () => {
    const acl = AclFile.parse(['pattern write devices/%c/#', 'pattern write users/%u/#'].join('\n'), '/etc/acl');
    expect(acl.check('write', 'devices/a/b/up', { clientId: 'a/b' })).toBe('none');
    expect(acl.check('write', 'users/x/up', { username: 'x', clientId: 'a/b' })).toBe('allow');
    expect(acl.check('write', 'users/x/y/up', { username: 'x/y', clientId: 'c' })).toBe('none');
  });

  it('broker rules: no publishing to $SYS (but a bridge state) or $share, no reading $share', () => {
    const acl = AclFile.parse('topic readwrite #\ntopic readwrite $SYS/#\ntopic readwrite $share/#\n', '/etc/acl');
    expect(acl.check('write', '$SYS/broker/x', anon)).toBe('deny');
    expect(acl.check('write', '$SYS/broker/connection/b1/state', anon)).toBe('allow');
    expect(acl.check('read', '$SYS/broker/x', anon)).toBe('allow');
    expect(acl.check('write', '$share/g/x', anon)).toBe('deny');
    expect(acl.check('read', '$share/g/x', anon)).toBe('deny');
  });

  describe('subscribe: a filter is allowed only if a readable ACL topic covers all it can match', () => {
    const acl = AclFile.parse(
      ['user alice', 'topic read sensors/#', 'topic read fixed/a', 'topic read plus/+/temp', 'topic write w/#', 'topic deny sensors/secret/#'].join('\n'),
      '/etc/acl',
    );
    it.each<[string, 'allow' | 'deny' | 'none']>([
      ['sensors/#', 'allow'],
      ['sensors/+/temp', 'allow'],
      ['sensors', 'allow'],
      ['sensors/+', 'allow'],
      ['sensors/secret/#', 'deny'],
      ['sensors/secret/x', 'deny'],
      ['fixed/a', 'allow'],
      ['fixed/+', 'none'],
      ['fixed/#', 'none'],
      ['#', 'none'],
      ['+/a', 'none'],
      ['plus/x/temp', 'allow'],
      ['plus/+/temp', 'allow'],
      ['plus/#', 'none'],
      ['plus/+/+', 'none'],
      ['w/x', 'none'],
      ['$share/group/sensors/+/temp', 'allow'],
      ['$share/group/fixed/+', 'none'],
      ['$share/group', 'deny'],
      ['a/#/b', 'deny'],
    ])('%s: %s', (filter, verdict) => {
      expect(acl.check('subscribe', filter, alice)).toBe(verdict);
    });

    it('a $ filter needs a $ entry', () => {
      const all = AclFile.parse('topic read #\n', 'f');
      expect(all.check('subscribe', '$SYS/#', anon)).toBe('none');
      expect(all.check('subscribe', 'anything/+', anon)).toBe('allow');
      expect(AclFile.parse('topic read $SYS/#\n', 'f').check('subscribe', '$SYS/broker/+', anon)).toBe('allow');
    });
  });
});

/**
 * The same ACL file (and password file) in a real Mosquitto 2.0 and in AclFile: for every client
 * and topic, Mosquitto's decision on a publish (PUBACK reason code, MQTT 5) and on delivering a
 * message (what a subscriber to # receives) equals AclFile.check ('allow' versus anything else:
 * Mosquitto denies what no line grants).
 */
describe('differential: real mosquitto 2.0 and AclFile on the same file', () => {
  const ACL = [
    '# anonymous clients',
    'topic read public/#',
    'topic write anon/in',
    'topic read sensors/+/temp',
    '',
    'user alice',
    'topic readwrite sensors/#',
    'topic deny sensors/secret',
    'topic read $test/a',
    'topic read read-only/#',
    '',
    'user bob smith',
    'topic read sensors/+/temp',
    'topic write bob/out',
    'topic write',
    '',
    'user admin',
    'topic readwrite #',
    'topic readwrite $test/#',
    '',
    'pattern read fence/%c',
    'pattern write devices/%u/up',
    'pattern deny devices/%u/up/blocked',
    'pattern readwrite clients/%c/#',
    'pattern read dev-%c/x',
    'pattern deny sensors/%u/deny',
    'pattern readwrite sensors/%u/deny/#',
  ].join('\n');
  const PASSWORD = 'pw';
  type Who = { username?: string; clientId: string };
  const subscribers: Who[] = [
    { clientId: 'anon-1' },
    { username: 'alice', clientId: 'alice-1' },
    { username: 'bob smith', clientId: 'bob-1' },
    { username: 'carol', clientId: 'carol-1' },
  ];
  const publishers: Who[] = [...subscribers, { username: 'carol', clientId: 'carol+x' }, { username: 'alice', clientId: 'a#' }, { username: 'admin', clientId: 'admin-2' }];
  const TOPICS = [
    'public/x',
    'anon/in',
    'sensors/a/temp',
    'sensors/secret',
    'sensors',
    'sensors/{u}/deny',
    'sensors/{u}/deny/x',
    'bob/out',
    'write',
    'devices/{u}/up',
    'devices/{u}/up/blocked',
    'clients/{c}/x',
    'dev-{c}/x',
    'read-only/x',
    '$test/a',
    '$test/b',
    'other/x',
  ];
  const resolve = (topic: string, who: Who): string => topic.replace('{u}', who.username ?? 'nobody').replace('{c}', who.clientId);

  let dir: string;
  let broker: MosquittoBroker;
  let acl: AclFile;
  const clients: MqttClient[] = [];

  const connect = async (who: Who): Promise<MqttClient> => {
    const client = await mqtt.connectAsync(`mqtt://127.0.0.1:${broker.port}`, {
      protocolVersion: 5,
      clientId: who.clientId,
      ...(who.username === undefined ? {} : { username: who.username, password: PASSWORD }),
      reconnectPeriod: 0,
      connectTimeout: 10_000,
    });
    clients.push(client);
    return client;
  };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'edgebridge-acl-'));
    const passwordFile = join(dir, 'passwd');
    for (const [i, user] of ['alice', 'bob smith', 'carol', 'admin'].entries()) {
      const r = spawnSync(mosquittoTool('mosquitto_passwd'), [...(i === 0 ? ['-c'] : []), '-b', passwordFile, user, PASSWORD], { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`mosquitto_passwd failed: ${r.stderr}`);
    }
    const aclFile = join(dir, 'acl');
    writeFileSync(aclFile, ACL);
    acl = AclFile.load(aclFile);
    broker = await startMosquitto(`password_file ${passwordFile}\nacl_file ${aclFile}\nallow_anonymous true\n`);
  });

  afterAll(async () => {
    await Promise.all(clients.map((c) => c.endAsync(true)));
    await broker?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const withDeadline = <T>(promise: Promise<T>, what: string): Promise<T> => {
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no ${what} within 10 s`)), 10_000);
    });
    return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
  };

  it('publishing: PUBACK "not authorized" exactly where AclFile does not allow write', { timeout: 30_000 }, async () => {
    const rows: { who: string; topic: string; mosquitto: string; edgebridge: string }[] = [];
    for (const who of publishers) {
      const client = await connect(who);
      for (const template of [...TOPICS, '$SYS/test']) {
        const topic = resolve(template, who);
        if (/[+#]/.test(topic)) continue; // not a topic name (a client id with a wildcard)
        let mosquitto = 'allow';
        try {
          await withDeadline(client.publishAsync(topic, 'x', { qos: 1 }), `PUBACK for ${who.clientId} on ${topic}`);
        } catch (err) {
          expect((err as { code?: number }).code, `${who.clientId} on ${topic}: ${String(err)}`).toBe(0x87);
          mosquitto = 'deny';
        }
        const verdict = acl.check('write', topic, who);
        rows.push({ who: `${who.username ?? '(anonymous)'}/${who.clientId}`, topic, mosquitto, edgebridge: verdict === 'allow' ? 'allow' : 'deny' });
      }
    }
    expect(rows.filter((r) => r.mosquitto !== r.edgebridge)).toEqual([]);
    const decided = (who: string, topic: string): string | undefined => rows.find((r) => r.who === who && r.topic === topic)?.mosquitto;
    // a user's own grant is decided before a pattern deny; without own lines the pattern deny applies
    expect(decided('alice/alice-1', 'sensors/alice/deny')).toBe('allow');
    expect(decided('carol/carol-1', 'sensors/carol/deny')).toBe('deny');
    expect(decided('carol/carol-1', 'sensors/carol/deny/x')).toBe('allow');
    // a + or # in the client id denies what the client's own lines do not grant
    expect(decided('carol/carol-1', 'devices/carol/up')).toBe('allow');
    expect(decided('carol/carol+x', 'devices/carol/up')).toBe('deny');
    expect(decided('alice/a#', 'sensors/a/temp')).toBe('allow');
    expect(decided('alice/a#', 'devices/alice/up')).toBe('deny');
    // "topic write" alone is readwrite on the topic "write"; $SYS is not writable
    expect(decided('bob smith/bob-1', 'write')).toBe('allow');
    expect(decided('admin/admin-2', '$SYS/test')).toBe('deny');
    // the cases are not all alike
    expect(rows.filter((r) => r.mosquitto === 'allow').length).toBeGreaterThan(15);
    expect(rows.filter((r) => r.mosquitto === 'deny').length).toBeGreaterThan(15);
  });

  it('delivering: a subscriber to # receives exactly the messages AclFile allows it to read', { timeout: 30_000 }, async () => {
    const admin = await connect({ username: 'admin', clientId: 'admin-1' });
    const received = new Map<string, string[]>();
    const fenced = new Map<string, Promise<void>>();
    for (const who of subscribers) {
      const client = await connect(who);
      const got: string[] = [];
      received.set(who.clientId, got);
      fenced.set(
        who.clientId,
        new Promise<void>((resolveFence, rejectFence) => {
          const timer = setTimeout(() => rejectFence(new Error(`${who.clientId} did not receive its fence message; got ${got.join(', ')}`)), 15_000);
          client.on('message', (topic) => {
            if (topic === `fence/${who.clientId}`) {
              clearTimeout(timer);
              resolveFence();
            } else {
              got.push(topic);
            }
          });
        }),
      );
      const granted = await client.subscribeAsync({ '#': { qos: 1 }, '$test/#': { qos: 1 } });
      // Mosquitto 2.0's acl_file does not check subscriptions: it grants them and filters each message.
      expect(granted.map((g) => g.qos)).toEqual([1, 1]);
    }
    const topics = [...new Set(subscribers.flatMap((who) => TOPICS.map((t) => resolve(t, who))))];
    for (const topic of topics) await admin.publishAsync(topic, 'x', { qos: 1 });
    // Messages of one publisher reach a subscriber in order: its fence comes after all the others.
    for (const who of subscribers) await admin.publishAsync(`fence/${who.clientId}`, 'x', { qos: 1 });
    await Promise.all(fenced.values());

    const mismatches: { who: string; topic: string; mosquitto: boolean; edgebridge: string }[] = [];
    for (const who of subscribers) {
      const got = received.get(who.clientId)!;
      for (const topic of topics) {
        const verdict = acl.check('read', topic, who);
        if (got.includes(topic) !== (verdict === 'allow')) mismatches.push({ who: who.clientId, topic, mosquitto: got.includes(topic), edgebridge: verdict });
      }
      expect(got.length, who.clientId).toBeGreaterThan(0);
    }
    expect(mismatches).toEqual([]);
    // 2.0 substitutes %c inside a level (dev-%c); a $ topic only through a $ line
    expect(received.get('alice-1')).toEqual(expect.arrayContaining(['dev-alice-1/x', '$test/a', 'sensors/alice/deny']));
    expect(received.get('alice-1')).not.toContain('$test/b');
    expect(received.get('anon-1')).toEqual(expect.arrayContaining(['public/x', 'sensors/a/temp', 'dev-anon-1/x']));
  });

  it('AclFile is stricter on SUBSCRIBE than Mosquitto 2.0 (which grants every filter and filters per message)', () => {
    const bob = { username: 'bob smith', clientId: 'bob-1' };
    expect(acl.check('subscribe', 'sensors/+/temp', bob)).toBe('allow');
    expect(acl.check('subscribe', 'sensors/#', bob)).toBe('none');
    expect(acl.check('subscribe', 'sensors/#', alice)).toBe('allow');
    expect(acl.check('subscribe', '#', alice)).toBe('none');
  });
});
