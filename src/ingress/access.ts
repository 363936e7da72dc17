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
    return this.decide('write', who, topic, (identity) => this.owns(identity, topic));
  }

  maySubscribe(who: Principal, filter: string): boolean {
    return this.decide('subscribe', who, filter, (identity) => this.withinOwnSubtree(identity, filter));
  }

  /** Checked for every message delivered to a subscriber (an ACL may narrow a granted filter). */
  mayReceive(who: Principal, topic: string): boolean {
    return this.decide('read', who, topic, (identity) => this.owns(identity, topic));
  }

  /** The ACL file's verdict where it has one; else the default rule for an identified client. */
  private decide(access: AclAccess, who: Principal, topic: string, ownRule: (identity: string) => boolean): boolean {
    if (this.open) return true;
    const verdict = this.options.acl?.check(access, topic, who) ?? 'none';
    if (verdict !== 'none') return verdict === 'allow';
    if (!this.options.authenticated) return true;
    return who.username !== undefined && ownRule(who.username);
  }

  /**
   * Whether a topic is the device's own: a routed topic is the device its route names, whatever
   * subtree it lies in; an unrouted one, if it lies in the device's subtree.
   */
  private owns(identity: string, topic: string): boolean {
    const match = this.options.routes.match(topic);
    return match ? match.deviceId === identity : this.withinOwnSubtree(identity, topic);
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
