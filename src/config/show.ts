import { Document, isMap, isScalar, type Node } from 'yaml';
import { envOverridesUsed } from './load.js';
import { mqttListenHost, type Config } from './schema.js';
import { redactSecrets } from './secrets.js';

/** `check-config`'s answer for a valid config: what the gateway would run with, in a few lines. */
export function configSummary(file: string, config: Config, env: NodeJS.ProcessEnv): string {
  const { mqtt } = config;
  const host = mqttListenHost(mqtt);
  const listeners = [
    mqtt.port === false ? undefined : `${address(host, mqtt.port)} (tcp)`,
    mqtt.tls && `${address(mqtt.tls.host ?? host, mqtt.tls.port)} (tls)`,
    mqtt.websocket && `${address(mqtt.websocket.host ?? host, mqtt.websocket.port)}${mqtt.websocket.path} (websocket)`,
  ].filter((l) => l !== undefined);
  const fromEnv = [...envOverridesUsed(env).keys()];
  const rows: [string, string][] = [
    ['gateway', config.gateway.id],
    ['mqtt', listeners.join(', ')],
    ['kafka', config.kafka.brokers.join(', ')],
    ['storage', config.storage.dir],
    ['routes', `${config.routes.length} (${config.routes.map((r) => r.kafka).join(', ')})`],
    ['commands', config.commands ? `${config.commands.kafka} -> ${config.commands.mqtt}` : 'off'],
    ['admin', config.admin.enabled ? address(config.admin.host, config.admin.port) : 'off'],
    ...(fromEnv.length > 0 ? [['environment', fromEnv.join(', ')] as [string, string]] : []),
  ];
  return `config OK: ${file}\n${rows.map(([key, value]) => `  ${`${key}:`.padEnd(13)}${value}`).join('\n')}\n`;
}

function address(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/**
 * `check-config --print`: the config the gateway would run with, as YAML — every default filled
 * in, environment overrides applied and each marked with its variable, secrets masked.
 */
export function effectiveConfigYaml(config: Config, env: NodeJS.ProcessEnv): string {
  const doc = new Document(redactSecrets(config));
  for (const [name, path] of envOverridesUsed(env)) {
    const comment = ` from ${name}`;
    const value = doc.getIn(path, true) as Node | undefined;
    if (isScalar(value)) {
      value.comment = comment; // on its line: `port: 1884 # from EDGEBRIDGE_MQTT_PORT`
    } else {
      // a list: above its key
      const parent = doc.getIn(path.slice(0, -1));
      const pair = isMap(parent) ? parent.items.find((p) => isScalar(p.key) && p.key.value === path[path.length - 1]) : undefined;
      if (pair && isScalar(pair.key)) pair.key.commentBefore = comment;
    }
  }
  return doc.toString();
}
