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
 * the password is checked at once, but the answer to a failed login is delayed — 100 ms,
 * doubling per failure from that source, up to `maxDelayMs` — and while `maxPending` logins of a
 * source are being checked or wait for the answer to their failure, further ones are refused
 * unchecked. So parallel
 * connections gain little (at most `maxPending` guesses per delay), a success is never delayed,
 * and other devices behind the same address (a NAT) are not held up by one device's wrong
 * password. A success, or `forgetAfterMs` without failures, resets a source. At most
 * `maxSources` are tracked (the oldest forgotten first), so a scan cannot grow memory.
 */
export class LoginThrottle {
  private readonly sources = new Map<string, { count: number; last: number; pending: number }>();

  constructor(
    private readonly maxDelayMs: number,
    private readonly maxPending = 10,
    private readonly forgetAfterMs = 15 * 60_000,
    private readonly maxSources = 10_000,
    private readonly now: () => number = Date.now,
  ) {}

  /**
   * Whether a login from `source` may be checked now; false while, after a failure, `maxPending`
   * logins of it are being checked or wait for the answer to their failure. A true must be followed by exactly
   * one `answered` (after `failed`) or `succeeded`.
   */
  admit(source: string): boolean {
    let entry = this.entry(source);
    if (!entry) {
      entry = { count: 0, last: this.now(), pending: 0 };
      this.sources.set(source, entry);
      if (this.sources.size > this.maxSources) this.sources.delete(this.sources.keys().next().value!);
    }
    // Until a failure is seen, nothing is limited: a fleet sharing one login behind one address
    // reconnects at once after a restart.
    if (entry.count > 0 && entry.pending >= this.maxPending) return false;
    entry.pending++;
    return true;
  }

  /** Records a failed login; returns how long to hold its answer. Call `answered` after that. */
  failed(source: string): number {
    const entry = this.sources.get(source) ?? { count: 0, last: 0, pending: 1 };
    this.sources.delete(source); // re-inserted last: Map order is then least recently failed first
    entry.count++;
    entry.last = this.now();
    this.sources.set(source, entry);
    if (this.sources.size > this.maxSources) this.sources.delete(this.sources.keys().next().value!);
    return Math.min(this.maxDelayMs, 100 * 2 ** Math.min(entry.count - 1, 20));
  }

  /** An admitted login ended without success (its held answer was sent, or it failed otherwise). */
  answered(source: string): void {
    const entry = this.sources.get(source);
    if (entry && entry.pending > 0) entry.pending--;
  }

  /** An admitted login succeeded: the source starts afresh. */
  succeeded(source: string): void {
    const entry = this.sources.get(source);
    if (!entry) return;
    entry.count = 0;
    if (entry.pending > 0) entry.pending--;
    if (entry.pending === 0) this.sources.delete(source);
  }

  get trackedSources(): number {
    return this.sources.size;
  }

  private entry(source: string): { count: number; last: number; pending: number } | undefined {
    const entry = this.sources.get(source);
    if (entry && entry.pending === 0 && this.now() - entry.last > this.forgetAfterMs) {
      this.sources.delete(source);
      return undefined;
    }
    return entry;
  }
}
