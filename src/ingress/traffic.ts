/**
 * What the gateway hears, per route and per device: the per-route counters of /metrics, and the
 * per-device detail of /status (who publishes most, who went silent). Per-device figures stay out
 * of Prometheus labels on purpose: a site has thousands of devices, a label each would make every
 * scrape and every series store pay for them.
 */

/** Publishes stored (and duplicates acknowledged) for one route since start. */
export interface RouteTraffic {
  /** The route's MQTT pattern. */
  readonly route: string;
  readonly topic: string;
  readonly stored: number;
  readonly duplicates: number;
}

export interface DeviceRate {
  readonly deviceId: string;
  /** Publishes in the past 60 s (estimated from the last full minute and the current one). */
  readonly perMinute: number;
  readonly lastSeenSecondsAgo: number;
}

export interface SilentDevice {
  readonly deviceId: string;
  /** Seconds since its last publish; since the gateway started when it sent none since then. */
  readonly silentSeconds: number;
  /** False for a device known from before the start (commands' served devices) and not heard since. */
  readonly seenSinceStart: boolean;
}

export interface DeviceActivity {
  /** Devices heard from within `silentAfterSeconds`. */
  readonly active: number;
  /** Known devices not heard from for longer. */
  readonly silent: number;
  readonly silentAfterSeconds: number;
  readonly topByRate: readonly DeviceRate[];
  /** The longest silent first, at most the same number as topByRate. */
  readonly silentDevices: readonly SilentDevice[];
  /** True when more devices published than the tracker keeps (the least recent were forgotten). */
  readonly truncated: boolean;
}

interface DeviceState {
  lastSeen: number;
  /** Start of the minute `current` counts. */
  windowStart: number;
  current: number;
  previous: number;
}

const MINUTE_MS = 60_000;
/** The device figures are computed at most this often… */
const ACTIVITY_REUSE_MS = 1_000;
/** …or this often while new devices appear (so a new device shows at once, but churn is bounded). */
const NEW_DEVICE_MS = 250;

export interface TrafficOptions {
  /** A device heard from less recently than this is silent. */
  readonly silentAfterMs: number;
  /** Devices tracked at most (least recently heard forgotten first): bounds memory. */
  readonly maxDevices?: number;
  /** Characters of device IDs kept at most, all together (IDs can be 1 KiB topic levels). */
  readonly maxIdChars?: number;
  readonly clock?: () => number;
}

export class Traffic {
  private readonly routes = new Map<string, { route: string; topic: string; stored: number; duplicates: number }>();
  /** In order of last publish, least recent first (Map keeps insertion order; re-inserted on each). */
  private readonly devices = new Map<string, DeviceState>();
  /** Devices known from before this start, not heard from since (served devices). */
  private readonly known = new Set<string>();
  private readonly startedAt: number;
  private readonly clock: () => number;
  readonly maxDevices: number;
  private readonly maxIdChars: number;
  private idChars = 0;
  private forgotten = false;
  private cached: { at: number; top: number; value: DeviceActivity; newDevices: boolean } | undefined;
  private silentAfter: number;

  constructor(options: TrafficOptions) {
    this.clock = options.clock ?? Date.now;
    this.startedAt = this.clock();
    this.silentAfter = options.silentAfterMs;
    this.maxDevices = options.maxDevices ?? 100_000;
    this.maxIdChars = options.maxIdChars ?? 4_000_000;
  }

  /** A device not heard from for longer is silent (reload may change it). */
  get silentAfterMs(): number {
    return this.silentAfter;
  }

  set silentAfterMs(ms: number) {
    this.silentAfter = ms;
    this.cached = undefined;
  }

  /** A publish of `deviceId` on `route` (MQTT pattern) to `topic` was stored, or was a duplicate. */
  heard(route: string, topic: string, deviceId: string, duplicate: boolean): void {
    const key = `${route}\0${topic}`;
    let r = this.routes.get(key);
    if (!r) this.routes.set(key, (r = { route, topic, stored: 0, duplicates: 0 }));
    if (duplicate) r.duplicates++;
    else r.stored++;

    const now = this.clock();
    let d = this.devices.get(deviceId);
    if (d) {
      this.devices.delete(deviceId); // re-inserted last: the map stays ordered by last publish
    } else {
      this.known.delete(deviceId);
      d = { lastSeen: now, windowStart: now, current: 0, previous: 0 };
      if (this.cached) this.cached.newDevices = true; // shown within NEW_DEVICE_MS; rates may lag a second
      this.idChars += deviceId.length;
      while (this.devices.size > 0 && (this.devices.size >= this.maxDevices || this.idChars > this.maxIdChars)) {
        const oldest = this.devices.keys().next().value as string;
        this.devices.delete(oldest);
        this.idChars -= oldest.length;
        this.forgotten = true;
      }
    }
    this.roll(d, now);
    d.current++;
    d.lastSeen = now;
    this.devices.set(deviceId, d);
  }

  /** Devices known from before the start (they count as silent until heard from). */
  know(deviceIds: Iterable<string>): void {
    for (const id of deviceIds) if (!this.devices.has(id)) this.known.add(id);
  }

  /** Forgets the counts of routes no longer configured (after a reload). */
  keepRoutes(routes: readonly { mqtt: string; kafka: string }[]): void {
    const keep = new Set(routes.map((r) => `${r.mqtt}\0${r.kafka}`));
    for (const key of this.routes.keys()) if (!keep.has(key)) this.routes.delete(key);
  }

  routeTraffic(): RouteTraffic[] {
    return [...this.routes.values()].map((r) => ({ ...r }));
  }

  /**
   * Who is active, the busiest, the silent. O(devices): answered from a copy at most a second old
   * (the page polls every 2 s, and 100,000 devices take tens of milliseconds of the ingest thread).
   */
  activity(top = 10): DeviceActivity {
    const now = this.clock();
    const c = this.cached;
    // age < 0: the wall clock was set back (NTP step) — the copy is of no known age
    const age = c === undefined ? -1 : now - c.at;
    if (c && c.top === top && age >= 0 && age < (c.newDevices ? NEW_DEVICE_MS : ACTIVITY_REUSE_MS)) return c.value;
    const value = this.computeActivity(top, now);
    this.cached = { at: now, top, value, newDevices: false };
    return value;
  }

  private computeActivity(top: number, now: number): DeviceActivity {
    const silentBefore = now - this.silentAfterMs;
    /** The busiest so far, busiest first: at most `top` (a full sort of every device is not needed). */
    const rates: DeviceRate[] = [];
    const before = (a: DeviceRate, b: DeviceRate) => b.perMinute - a.perMinute || a.deviceId.localeCompare(b.deviceId);
    const silent: SilentDevice[] = [];
    let active = 0;
    // Least recent first: the silent ones come first, in the order to show them.
    for (const [deviceId, d] of this.devices) {
      if (d.lastSeen < silentBefore) {
        if (silent.length < top) silent.push({ deviceId, silentSeconds: Math.round((now - d.lastSeen) / 1000), seenSinceStart: true });
        continue;
      }
      active++;
      this.roll(d, now);
      // Sliding-window estimate: the part of the last full minute still inside the past 60 s, plus this one.
      const perMinute = Math.round(d.previous * (1 - (now - d.windowStart) / MINUTE_MS) + d.current);
      if (top === 0 || (rates.length === top && before(rates[top - 1]!, { deviceId, perMinute, lastSeenSecondsAgo: 0 }) <= 0)) continue;
      const rate = { deviceId, perMinute, lastSeenSecondsAgo: Math.round((now - d.lastSeen) / 1000) };
      let i = rates.length;
      while (i > 0 && before(rates[i - 1]!, rate) > 0) i--;
      rates.splice(i, 0, rate);
      if (rates.length > top) rates.pop();
    }
    const silentKnown = now - this.startedAt > this.silentAfterMs ? this.known.size : 0;
    if (silentKnown > 0 && silent.length < top) {
      // Never heard since the start: longer silent than anyone heard since.
      const since = Math.round((now - this.startedAt) / 1000);
      const unheard: SilentDevice[] = [];
      for (const deviceId of this.known) {
        if (unheard.length >= top) break;
        unheard.push({ deviceId, silentSeconds: since, seenSinceStart: false });
      }
      silent.unshift(...unheard);
      silent.length = Math.min(silent.length, top);
    }
    return {
      active,
      silent: this.devices.size - active + silentKnown,
      silentAfterSeconds: this.silentAfterMs / 1000,
      topByRate: rates,
      silentDevices: silent,
      truncated: this.forgotten,
    };
  }

  /** Moves the minute window on: `previous` is the last full minute. */
  private roll(d: DeviceState, now: number): void {
    const elapsed = now - d.windowStart;
    if (elapsed < MINUTE_MS) return;
    d.previous = elapsed < 2 * MINUTE_MS ? d.current : 0;
    d.current = 0;
    d.windowStart = now - (elapsed % MINUTE_MS);
  }
}
