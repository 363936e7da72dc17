import type { PasswordCheck } from './access.js';

/** What a client showed to log in: its CONNECT credentials and, on TLS, its certificate. */
export interface Credentials {
  readonly username: string | undefined;
  readonly password: Buffer | undefined;
  /** Present on the TLS listener. */
  readonly tls?: {
    /** The client's certificate chains to mqtt.tls.caFile. */
    readonly verified: boolean;
    /** The verified certificate's subject CN. */
    readonly commonName: string | undefined;
    readonly useIdentityAsUsername: boolean;
  };
}

export type LoginResult =
  | { readonly ok: true; readonly username: string | undefined }
  /** MQTT 3.1.1 CONNACK codes: 4 bad user name or password, 5 not authorized. */
  | { readonly ok: false; readonly returnCode: 4 | 5; readonly reason: string };

export interface AuthenticatorOptions {
  readonly passwords?: PasswordCheck | undefined;
  /** Authentication is configured: a password file or client certificates. */
  readonly authenticated: boolean;
  readonly allowAnonymous: boolean;
}

/**
 * Decides who a connecting client is: a verified certificate's CN when the TLS listener uses it
 * as the identity; else a username and password checked against the password file; else a
 * verified client certificate's CN (unlike Mosquitto, which would take the claimed username: an
 * identity is only what was proven); else the client is anonymous, accepted only on a gateway
 * without authentication or with `allowAnonymous`.
 */
export class Authenticator {
  constructor(private readonly options: AuthenticatorOptions) {}

  /**
   * Whether `identity` may use `clientId`. A client id that is another user's name in the password
   * file is that user's: otherwise any device could squat the session of the device named so
   * (client ids are usually device ids) before it connects, and have it refused for good.
   */
  mayUseClientId(clientId: string, identity: string | undefined): boolean {
    return clientId === identity || this.options.passwords?.has(clientId) !== true;
  }

  /** A device whose client id is its own identity may always have it, whoever used it before. */
  ownsClientId(clientId: string, identity: string | undefined): boolean {
    return identity !== undefined && clientId === identity;
  }

  async login(credentials: Credentials): Promise<LoginResult> {
    const { tls, username, password } = credentials;
    if (tls?.useIdentityAsUsername) {
      if (tls.verified && tls.commonName) return { ok: true, username: tls.commonName };
      return { ok: false, returnCode: 5, reason: 'the client certificate has no subject CN to use as the identity' };
    }
    const { passwords } = this.options;
    if (username !== undefined && passwords !== undefined) {
      if (await passwords.verify(username, password)) return { ok: true, username };
      return { ok: false, returnCode: 4, reason: 'wrong username or password' };
    }
    // A verified certificate vouches for its CN, not for a username the client merely claims.
    if (tls?.verified) {
      if (tls.commonName) return { ok: true, username: tls.commonName };
      return { ok: false, returnCode: 5, reason: 'the client certificate has no subject CN to identify the device' };
    }
    // Without authentication configured (a loopback-only gateway) a username is taken as given.
    if (!this.options.authenticated) return { ok: true, username };
    if (this.options.allowAnonymous) return { ok: true, username: undefined };
    return {
      ok: false,
      returnCode: 5,
      reason: username === undefined ? 'anonymous clients are not allowed' : 'no password file to check the username against on this listener',
    };
  }
}

/**
 * Slows down password guessing from one source (the ingress keys it by address and username):
 * after a failed login, logins from that source are answered one after another, spaced by a delay that doubles per failure (100 ms, 200 ms, ...
 * up to `maxDelayMs`), so parallel connections gain nothing; one that would wait longer than
 * twice that is refused at once (it would only hold a connection slot). A success, or
 * `forgetAfterMs` without failures, resets it. At most `maxAddresses` are tracked (the oldest
 * forgotten first), so a scan from many addresses cannot grow memory.
 */
export class LoginThrottle {
  private readonly failures = new Map<string, { count: number; last: number; nextAt: number }>();

  constructor(
    private readonly maxDelayMs: number,
    private readonly forgetAfterMs = 15 * 60_000,
    private readonly maxAddresses = 10_000,
    private readonly now: () => number = Date.now,
  ) {}

  /** The delay between logins from `address` (0: not throttled). */
  delayMs(address: string): number {
    const entry = this.entry(address);
    return entry ? Math.min(this.maxDelayMs, 100 * 2 ** Math.min(entry.count - 1, 20)) : 0;
  }

  /**
   * Books the next login slot of `address`: how long to wait before checking it, or undefined
   * when the queue of waiting logins from there is already too long (refuse it now).
   */
  reserve(address: string): number | undefined {
    const entry = this.entry(address);
    if (!entry) return 0;
    const now = this.now();
    const at = Math.max(now, entry.nextAt) + this.delayMs(address);
    if (at - now > 2 * Math.max(this.maxDelayMs, 100)) return undefined;
    entry.nextAt = at;
    return at - now;
  }

  failed(address: string): void {
    const entry = this.entry(address);
    this.failures.delete(address); // re-inserted last: Map order is then least recently failed first
    this.failures.set(address, { count: (entry?.count ?? 0) + 1, last: this.now(), nextAt: entry?.nextAt ?? 0 });
    if (this.failures.size > this.maxAddresses) this.failures.delete(this.failures.keys().next().value!);
  }

  succeeded(address: string): void {
    this.failures.delete(address);
  }

  get trackedAddresses(): number {
    return this.failures.size;
  }

  private entry(address: string): { count: number; last: number; nextAt: number } | undefined {
    const entry = this.failures.get(address);
    if (entry && this.now() - entry.last > this.forgetAfterMs) {
      this.failures.delete(address);
      return undefined;
    }
    return entry;
  }
}
