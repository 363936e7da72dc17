import type { AddressInfo, Server } from 'node:net';
import { EdgebridgeError, type ErrorCode } from './errors.js';

/**
 * Binds `server` (net or http) to host:port; a failure becomes a typed error naming the address.
 * Errors after binding (EMFILE on accept, ...) go to `onLaterError` instead of crashing the process.
 */
export function listen(
  server: Server,
  host: string,
  port: number,
  code: ErrorCode,
  what: string,
  onLaterError: (err: Error) => void,
): Promise<AddressInfo> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error): void =>
      reject(new EdgebridgeError(code, `cannot listen for ${what} on ${host}:${port}: ${err.message}`, { cause: err }));
    server.once('error', onError);
    server.listen(port, host, () => {
      server.off('error', onError);
      server.on('error', onLaterError);
      resolve(server.address() as AddressInfo);
    });
  });
}
