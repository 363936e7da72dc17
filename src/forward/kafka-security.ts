import type { Config } from '../config/schema.js';
import { readCertificates, readConfigFile, readKeyPair } from '../config/files.js';
import { EdgebridgeError } from '../errors.js';

// Apart from kafka-client.ts so that the main thread, which only reads these files, does not
// load kafkajs (about 2 MB of heap): the Kafka client lives in the forwarder's thread.

/** TLS options for kafkajs (node:tls), with the PEM files' contents already read. */
export interface KafkaTls {
  readonly ca?: string;
  readonly cert?: string;
  readonly key?: string;
  readonly rejectUnauthorized: boolean;
  readonly servername?: string;
}

export interface KafkaSasl {
  readonly mechanism: 'plain' | 'scram-sha-256' | 'scram-sha-512';
  readonly username: string;
  readonly password: string;
}

/**
 * `kafka.ssl` and `kafka.sasl` resolved: files read, the password in hand. Plain data (the
 * forwarder's thread receives it by structured clone); never logged.
 */
export interface KafkaSecurity {
  /** false: plaintext connections. */
  readonly ssl: KafkaTls | false;
  readonly sasl: KafkaSasl | undefined;
  /** Where the brokers' CA comes from, for messages: the kafka.ssl.caFile path, else the system's CAs. */
  readonly caFile: string | undefined;
}

export const NO_KAFKA_SECURITY: KafkaSecurity = { ssl: false, sasl: undefined, caFile: undefined };

/**
 * Reads the files `kafka.ssl` and `kafka.sasl` name (CA bundle, client certificate and key,
 * password file) and checks them, so that a wrong path or file fails at start with the key and
 * the file named (EB_ERR_CONFIG_FILE), not later as a Kafka connection error.
 */
export function readKafkaSecurity(kafka: Pick<Config['kafka'], 'ssl' | 'sasl'>): KafkaSecurity {
  let ssl: KafkaTls | false = false;
  let caFile: string | undefined;
  if (kafka.ssl !== false) {
    const options = kafka.ssl === true ? { rejectUnauthorized: true } : kafka.ssl;
    const tls: { -readonly [K in keyof KafkaTls]: KafkaTls[K] } = { rejectUnauthorized: options.rejectUnauthorized };
    if ('caFile' in options && options.caFile !== undefined) {
      caFile = options.caFile;
      tls.ca = readCertificates('kafka.ssl.caFile', options.caFile);
    }
    if ('certFile' in options || 'keyFile' in options) {
      const { certFile, keyFile } = options as { certFile?: string; keyFile?: string };
      if ((certFile === undefined) !== (keyFile === undefined)) {
        throw new EdgebridgeError('EB_ERR_CONFIG_FILE', 'kafka.ssl.certFile and kafka.ssl.keyFile go together: give both (mutual TLS) or neither');
      }
      if (certFile !== undefined && keyFile !== undefined) {
        const pair = readKeyPair({ key: 'kafka.ssl.certFile', file: certFile }, { key: 'kafka.ssl.keyFile', file: keyFile });
        tls.cert = pair.cert;
        tls.key = pair.key;
      }
    }
    if ('servername' in options && options.servername !== undefined) tls.servername = options.servername;
    ssl = tls;
  }
  let sasl: KafkaSasl | undefined;
  if (kafka.sasl !== undefined) {
    const { mechanism, username, password, passwordFile } = kafka.sasl;
    let secret = password;
    if (secret === undefined && passwordFile !== undefined) {
      secret = readConfigFile('kafka.sasl.passwordFile', passwordFile).replace(/\r?\n$/, '');
      if (secret === '') throw new EdgebridgeError('EB_ERR_CONFIG_FILE', `kafka.sasl.passwordFile ${passwordFile} is empty`);
    }
    if (secret === undefined) {
      throw new EdgebridgeError('EB_ERR_CONFIG_FILE', 'kafka.sasl has no password: set kafka.sasl.password, kafka.sasl.passwordFile or EDGEBRIDGE_KAFKA_SASL_PASSWORD');
    }
    sasl = { mechanism, username, password: secret };
  }
  return { ssl, sasl, caFile };
}
