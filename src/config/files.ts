import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createSecureContext } from 'node:tls';
import { EdgebridgeError } from '../errors.js';

/**
 * Files a config names (certificates, keys, password files), read at start so that a wrong path or
 * a wrong file fails then with the key and the file named (EB_ERR_CONFIG_FILE), not later as a
 * connection error.
 */
export function readConfigFile(key: string, file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    throw new EdgebridgeError('EB_ERR_CONFIG_FILE', `cannot read ${key} ${file}: ${(err as Error).message}`, { cause: err });
  }
}

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g;

/** Reads a PEM file of one or more certificates (a chain, a CA bundle) and checks each parses. */
export function readCertificates(key: string, file: string): string {
  const pem = readConfigFile(key, file);
  const blocks = pem.match(PEM_CERTIFICATE) ?? [];
  if (blocks.length === 0) {
    throw new EdgebridgeError('EB_ERR_CONFIG_FILE', `${key} ${file} holds no PEM certificate (-----BEGIN CERTIFICATE-----)`);
  }
  for (const block of blocks) {
    try {
      new X509Certificate(block);
    } catch (err) {
      throw new EdgebridgeError('EB_ERR_CONFIG_FILE', `${key} ${file} holds a certificate that cannot be parsed: ${(err as Error).message}`, { cause: err });
    }
  }
  return pem;
}

/** Reads a certificate and its private key, and checks that they belong together. */
export function readKeyPair(
  cert: { key: string; file: string },
  key: { key: string; file: string },
): { cert: string; key: string } {
  const certPem = readCertificates(cert.key, cert.file);
  const keyPem = readConfigFile(key.key, key.file);
  try {
    createSecureContext({ cert: certPem, key: keyPem });
  } catch (err) {
    throw new EdgebridgeError(
      'EB_ERR_CONFIG_FILE',
      `${key.key} ${key.file} is not an unencrypted PEM private key matching ${cert.key} ${cert.file}: ${(err as Error).message}`,
      { cause: err },
    );
  }
  return { cert: certPem, key: keyPem };
}
