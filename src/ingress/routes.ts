/**
 * Route patterns map MQTT topics to Kafka topics. A pattern is an MQTT topic filter in which one
 * level may be the named wildcard `{deviceId}`: it matches one level like `+`, and its value is the
 * device ID (the Kafka record key). `+` and a trailing `#` keep their MQTT meaning [MQTT-4.7.1].
 */
export interface RouteDedup {
  readonly fields: readonly string[];
  /** `window`: counter dedup per stream; `exact`: an index entry per reading; unset: window with 2+ fields. */
  readonly mode?: 'window' | 'exact';
  readonly window: number;
  readonly retransmitWindow?: number;
}

export interface RouteSpec {
  readonly mqtt: string;
  readonly kafka: string;
  readonly dedup?: RouteDedup | false;
  readonly compact?: boolean;
}

export interface CompiledRoute {
  readonly index: number;
  readonly pattern: string;
  readonly kafkaTopic: string;
  readonly dedup: RouteDedup | false;
  readonly compact: boolean;
  /** Position of `{deviceId}` among the topic levels. */
  readonly deviceLevel: number;
  match(levels: readonly string[]): string | undefined;
}

export interface RouteMatch {
  readonly route: CompiledRoute;
  readonly deviceId: string;
}

export class RoutePatternError extends Error {
  constructor(pattern: string, problem: string) {
    super(`route pattern "${pattern}": ${problem}`);
    this.name = 'RoutePatternError';
  }
}

const DEVICE_WILDCARD = '{deviceId}';

export function compileRoute(spec: RouteSpec, index = 0): CompiledRoute {
  const pattern = spec.mqtt;
  if (pattern.length === 0) throw new RoutePatternError(pattern, 'is empty');
  const levels = pattern.split('/');
  let deviceLevel = -1;
  levels.forEach((level, i) => {
    if (level === DEVICE_WILDCARD) {
      if (deviceLevel !== -1) throw new RoutePatternError(pattern, `${DEVICE_WILDCARD} may appear only once`);
      deviceLevel = i;
    } else if (level === '#') {
      if (i !== levels.length - 1) throw new RoutePatternError(pattern, '"#" must be the last level');
    } else if (level !== '+' && /[+#{}]/.test(level)) {
      throw new RoutePatternError(
        pattern,
        `level "${level}" mixes a wildcard with text; wildcards must fill a whole level`,
      );
    }
  });
  if (deviceLevel === -1) {
    throw new RoutePatternError(pattern, `needs a ${DEVICE_WILDCARD} level, e.g. "devices/${DEVICE_WILDCARD}/telemetry/#"`);
  }
  const multiLevel = levels[levels.length - 1] === '#';
  const fixedLevels = multiLevel ? levels.length - 1 : levels.length;

  return {
    index,
    pattern,
    kafkaTopic: spec.kafka,
    dedup: spec.dedup ?? false,
    compact: spec.compact ?? false,
    deviceLevel,
    match(topicLevels) {
      // "a/#" also matches "a" itself [MQTT-4.7.1-2]
      if (multiLevel ? topicLevels.length < fixedLevels : topicLevels.length !== fixedLevels) return undefined;
      for (let i = 0; i < fixedLevels; i++) {
        const want = levels[i]!;
        const got = topicLevels[i]!;
        if (want === '+') continue;
        if (i === deviceLevel) {
          if (got.length === 0) return undefined; // an empty level is no device ID
          continue;
        }
        if (want !== got) return undefined;
      }
      return topicLevels[deviceLevel];
    },
  };
}

/** Matches topics against routes in config order; the first route that matches wins. */
export class RouteTable {
  readonly routes: readonly CompiledRoute[];

  constructor(specs: readonly RouteSpec[]) {
    this.routes = specs.map((spec, i) => compileRoute(spec, i));
  }

  match(topic: string): RouteMatch | undefined {
    // Topics starting with $ are never matched by wildcards [MQTT-4.7.2-1]
    if (topic.startsWith('$')) return undefined;
    const levels = topic.split('/');
    for (const route of this.routes) {
      const deviceId = route.match(levels);
      if (deviceId !== undefined) return { route, deviceId };
    }
    return undefined;
  }

  get kafkaTopics(): string[] {
    return [...new Set(this.routes.map((r) => r.kafkaTopic))];
  }
}
