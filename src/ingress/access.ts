import type { RouteTable } from './routes.js';

/** A password file's check (Mosquitto format: see auth/password-file.ts). */
export interface PasswordCheck {
  verify(username: string, password: Buffer | string | undefined): Promise<boolean>;
  has(username: string): boolean;
}

export type AclAccess = 'read' | 'write' | 'subscribe';

/** An ACL file's verdict (Mosquitto syntax: see auth/acl-file.ts); 'none' leaves it to the default rule. */
export interface AclCheck {
  check(access: AclAccess, topic: string, who: { username?: string; clientId: string }): 'allow' | 'deny' | 'none';
}

/** Who a connection is, once its CONNECT was accepted. */
export interface Principal {
  /** The identity (password-file user, or certificate CN); undefined for anonymous clients. */
  readonly username: string | undefined;
  readonly clientId: string;
}

export interface AccessPolicyOptions {
  readonly routes: RouteTable;
  readonly acl?: AclCheck | undefined;
  /**
   * Clients must prove who they are (a password file or client certificates). When they need not
   * (a loopback-only gateway, or `allowAnonymous` without any), every client may do everything
   * unless an ACL file says otherwise, as with Mosquitto.
   */
  readonly authenticated: boolean;
}

/**
 * Who may publish, subscribe and receive what. A device's identity is its username; by default it
 * may publish only to routed topics whose `{deviceId}` is that identity, and subscribe to and
 * receive only its own subtree (a route's levels up to `{deviceId}`, then anything); an unrouted
 * topic in its own subtree (local traffic) it may publish too. An ACL file
 * in Mosquitto's syntax grants more (a monitoring user, local topics) or takes away: whatever it
 * decides (Mosquitto's order: the client's own lines, then patterns; deny first) stands.
 */
export class AccessPolicy {
  private readonly open: boolean;

  constructor(private readonly options: AccessPolicyOptions) {
    this.open = !options.authenticated && options.acl === undefined;
  }

  mayPublish(who: Principal, topic: string): boolean {
    if (this.open) return true;
    const verdict = this.options.acl?.check('write', topic, who) ?? 'none';
    if (verdict !== 'none') return verdict === 'allow';
    if (!this.options.authenticated) return true;
    if (who.username === undefined) return false;
    // A routed topic is stored as the device its route names, whatever subtree it lies in.
    const match = this.options.routes.match(topic);
    return match ? match.deviceId === who.username : this.withinOwnSubtree(who.username, topic);
  }

  maySubscribe(who: Principal, filter: string): boolean {
    if (this.open) return true;
    const verdict = this.options.acl?.check('subscribe', filter, who) ?? 'none';
    if (verdict !== 'none') return verdict === 'allow';
    if (!this.options.authenticated) return true;
    return who.username !== undefined && this.withinOwnSubtree(who.username, filter);
  }

  /** Checked for every message delivered to a subscriber (an ACL may narrow a granted filter). */
  mayReceive(who: Principal, topic: string): boolean {
    if (this.open) return true;
    const verdict = this.options.acl?.check('read', topic, who) ?? 'none';
    if (verdict !== 'none') return verdict === 'allow';
    if (!this.options.authenticated) return true;
    if (who.username === undefined) return false;
    const match = this.options.routes.match(topic);
    return match ? match.deviceId === who.username : this.withinOwnSubtree(who.username, topic);
  }

  /**
   * Whether a topic or filter lies in a device's subtree of some route: the route's levels before
   * `{deviceId}` (a `+` there takes any level, or `+`), then the identity itself, then anything.
   */
  private withinOwnSubtree(identity: string, topicOrFilter: string): boolean {
    if (topicOrFilter.startsWith('$')) return false;
    const levels = topicOrFilter.split('/');
    return this.options.routes.routes.some((route) => {
      const patternLevels = route.pattern.split('/');
      if (levels.length <= route.deviceLevel) return false;
      for (let i = 0; i < route.deviceLevel; i++) {
        const want = patternLevels[i]!;
        const got = levels[i]!;
        if (got === '#') return false;
        if (want !== '+' && want !== got) return false;
      }
      return levels[route.deviceLevel] === identity;
    });
  }
}
