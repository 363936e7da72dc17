import { describe, expect, it } from 'vitest';
import { AccessPolicy, type AclCheck } from '../../src/ingress/access.js';
import { Authenticator } from '../../src/ingress/authenticator.js';
import { RouteTable } from '../../src/ingress/routes.js';

const routes = new RouteTable([
  { mqtt: 'devices/{deviceId}/telemetry/#', kafka: 't' },
  { mqtt: 'sites/+/{deviceId}/state', kafka: 's' },
]);
const dev1 = { username: 'dev-1', clientId: 'c1' };

describe('AccessPolicy (default rule: own topics)', () => {
  const policy = new AccessPolicy({ routes, authenticated: true });

  it('lets a device publish only to routed topics naming itself, and unrouted ones in its own subtree', () => {
    expect(policy.mayPublish(dev1, 'devices/dev-1/telemetry')).toBe(true);
    expect(policy.mayPublish(dev1, 'devices/dev-1/telemetry/a/b')).toBe(true);
    expect(policy.mayPublish(dev1, 'sites/north/dev-1/state')).toBe(true);
    expect(policy.mayPublish(dev1, 'devices/dev-1/status')).toBe(true);
    expect(policy.mayPublish(dev1, 'devices/dev-2/telemetry')).toBe(false);
    expect(policy.mayPublish(dev1, 'sites/north/dev-2/state')).toBe(false);
    expect(policy.mayPublish(dev1, 'other/topic')).toBe(false);
    expect(policy.mayPublish({ username: undefined, clientId: 'x' }, 'devices/dev-1/telemetry')).toBe(false);
  });

  it('judges a routed topic by the device its route names, not by the subtree it lies in', () => {
    // "sites/dev-1/x/state" lies in no subtree of dev-1 via route 1, but route 2 stores it as device "x".
    const shadow = new AccessPolicy({ routes: new RouteTable([{ mqtt: 'devices/+/{deviceId}', kafka: 'a' }, { mqtt: 'devices/{deviceId}/#', kafka: 'b' }]), authenticated: true });
    expect(shadow.mayPublish(dev1, 'devices/dev-1/victim')).toBe(false);
    expect(shadow.mayPublish(dev1, 'devices/x/dev-1')).toBe(true);
  });

  it('lets a device subscribe to and receive its own subtree only', () => {
    for (const filter of ['devices/dev-1/#', 'devices/dev-1/commands', 'sites/+/dev-1/#', 'sites/north/dev-1/state']) expect(policy.maySubscribe(dev1, filter), filter).toBe(true);
    for (const filter of ['#', '+/dev-1/#', 'devices/+/telemetry', 'devices/#', 'devices/dev-2/#', '$SYS/#', 'devices']) expect(policy.maySubscribe(dev1, filter), filter).toBe(false);
    expect(policy.mayReceive(dev1, 'devices/dev-1/commands')).toBe(true);
    expect(policy.mayReceive(dev1, 'devices/dev-2/commands')).toBe(false);
  });

  it('lets an ACL grant more and deny what the default rule allows', () => {
    const acl: AclCheck = {
      check: (access, topic, who) =>
        who.username === 'monitor' && access !== 'write' && topic.startsWith('devices/') ? 'allow' : topic === 'devices/dev-1/telemetry' ? 'deny' : 'none',
    };
    const withAcl = new AccessPolicy({ routes, acl, authenticated: true });
    expect(withAcl.maySubscribe({ username: 'monitor', clientId: 'm' }, 'devices/#')).toBe(true);
    expect(withAcl.mayPublish({ username: 'monitor', clientId: 'm' }, 'devices/dev-1/telemetry')).toBe(false);
    expect(withAcl.mayPublish(dev1, 'devices/dev-1/telemetry')).toBe(false);
    expect(withAcl.mayPublish(dev1, 'devices/dev-1/telemetry/x')).toBe(true);
  });

  it('without authentication and without an ACL file lets everyone do everything (loopback gateway)', () => {
    const open = new AccessPolicy({ routes, authenticated: false });
    expect(open.mayPublish({ username: undefined, clientId: 'x' }, 'devices/dev-2/telemetry')).toBe(true);
    expect(open.maySubscribe({ username: undefined, clientId: 'x' }, '#')).toBe(true);
  });
});

describe('Authenticator', () => {
  const passwords = {
    verify: async (user: string, password: Buffer | string | undefined) => user === 'dev-1' && String(password) === 'pw',
    has: (user: string) => user === 'dev-1' || user === 'dev-2',
  };

  it('checks passwords, refuses anonymous clients unless allowed, and takes a certificate CN as identity', async () => {
    const auth = new Authenticator({ passwords, authenticated: true, allowAnonymous: false });
    expect(await auth.login({ username: 'dev-1', password: Buffer.from('pw') })).toEqual({ ok: true, username: 'dev-1' });
    expect(await auth.login({ username: 'dev-1', password: Buffer.from('no') })).toMatchObject({ ok: false, returnCode: 4 });
    expect(await auth.login({ username: undefined, password: undefined })).toMatchObject({ ok: false, returnCode: 5 });
    const tls = { verified: true, commonName: 'dev-7', useIdentityAsUsername: true };
    expect(await auth.login({ username: 'dev-1', password: undefined, tls })).toEqual({ ok: true, username: 'dev-7' });
    expect(await auth.login({ username: undefined, password: undefined, tls: { ...tls, commonName: undefined } })).toMatchObject({ ok: false, returnCode: 5 });
    const anonymous = new Authenticator({ passwords, authenticated: true, allowAnonymous: true });
    expect(await anonymous.login({ username: undefined, password: undefined })).toEqual({ ok: true, username: undefined });
    expect(await anonymous.login({ username: 'dev-1', password: Buffer.from('no') })).toMatchObject({ ok: false, returnCode: 4 });
  });

  it("keeps a client id that is a user's name for that user", () => {
    const auth = new Authenticator({ passwords, authenticated: true, allowAnonymous: true });
    expect(auth.mayUseClientId('dev-1', 'dev-1')).toBe(true);
    expect(auth.mayUseClientId('dev-1', 'dev-2')).toBe(false);
    expect(auth.mayUseClientId('dev-1', undefined)).toBe(false);
    expect(auth.mayUseClientId('sensor-a', 'dev-2')).toBe(true);
  });
});
