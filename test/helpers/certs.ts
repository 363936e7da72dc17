import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

function openssl(cwd: string, ...args: string[]): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

export interface TestCa {
  readonly dir: string;
  readonly name: string;
  /** The CA certificate (PEM). */
  readonly caFile: string;
  /** Issues a certificate for `cn` (server certificates get SANs 127.0.0.1 and localhost). */
  issue(cn: string, kind: 'server' | 'client'): { certFile: string; keyFile: string };
}

/** A throwaway certificate authority made with the real `openssl`, for TLS and mTLS tests. */
export function makeCa(dir: string, name: string): TestCa {
  const caKey = `${name}-ca.key`;
  const caFile = join(dir, `${name}-ca.pem`);
  openssl(dir, 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', caKey, '-out', caFile, '-days', '2', '-subj', `/CN=${name} test CA`);
  let serial = 1;
  return {
    dir,
    name,
    caFile,
    issue(cn, kind) {
      const base = `${name}-${kind}-${cn.replace(/[^A-Za-z0-9._-]/g, '_')}`;
      const ext = join(dir, `${base}.ext`);
      writeFileSync(
        ext,
        kind === 'server'
          ? 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n'
          : 'extendedKeyUsage=clientAuth\n',
      );
      openssl(dir, 'req', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${base}.key`, '-out', `${base}.csr`, '-subj', `/CN=${cn}`);
      openssl(dir, 'x509', '-req', '-in', `${base}.csr`, '-CA', caFile, '-CAkey', caKey, '-set_serial', String(serial++), '-days', '2', '-extfile', ext, '-out', `${base}.pem`);
      return { certFile: join(dir, `${base}.pem`), keyFile: join(dir, `${base}.key`) };
    },
  };
}
