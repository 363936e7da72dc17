/**
 * Mosquitto 2.0 password files (`password_file`), read and written the way Mosquitto does.
 *
 * Mirrored from Mosquitto 2.0.11 (src/security_default.c `pwfile__parse`, `unpwd__decode_passwords`,
 * `mosquitto_unpwd_check_default`, `pw__digest`; apps/mosquitto_passwd/mosquitto_passwd.c):
 * - A line is `username:hash`. Lines whose first character is `#` are comments. The user name is
 *   everything before the first `:`, the hash what follows; both are trimmed of white space
 *   (`misc__trimblanks`), so CRLF files work.
 * - `$7$<iterations>$<base64 salt>$<base64 hash>`: PBKDF2-HMAC-SHA512 of the password over the salt
 *   bytes, 64 bytes long. `$6$<base64 salt>$<base64 hash>`: SHA-512 of (password bytes, salt bytes).
 *   The salt is 12 bytes (Mosquitto 2.1 also accepts 64-byte salts, and writes them; so do we read them).
 * - A user listed with a wrong password, no password, or not listed at all is refused.
 * - `mosquitto_passwd` refuses user names containing `:` or control characters and writes
 *   `user:$7$101$<16 base64 chars>$<88 base64 chars>` (12 random salt bytes, 101 iterations).
 *
 * Deliberately stricter than Mosquitto, which logs and skips what it cannot use (so that the user
 * silently cannot log in): a line without `:`, an empty user name or hash, a plain-text or unknown
 * hash, bad base64, a wrong salt or hash length, a `:` after the hash (Mosquitto ignores the
 * rest), a second line for the same user, all raise EB_ERR_AUTH_FILE naming `file:line`.
 * `$argon2id$` lines (written by Mosquitto 2.1) are refused with a hint: Node 20 has no Argon2.
 * Mosquitto hashes the password up to its first NUL byte (`strlen`); we hash all bytes the client
 * sent, so "secret\0junk" does not pass for "secret".
 *
 * The editing helpers keep every other line (comments, blank lines, entries they cannot parse)
 * byte for byte, unlike `mosquitto_passwd` 2.0, which refuses files with comments or blank lines
 * ("Corrupt password file at line 1").
 */
import { createHash, pbkdf2, pbkdf2Sync, randomBytes, timingSafeEqual } from 'node:crypto';
import {
  closeSync,
  fchmodSync,
  fsyncSync,
  openSync,
  readFileSync,
  realpathSync,
  renameSync,
  statSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { EdgebridgeError, describeError } from '../../errors.js';

/** Mosquitto 2.0's `PW_DEFAULT_ITERATIONS` (2.1 uses 210000 for `$7$`). */
export const DEFAULT_ITERATIONS = 101;
/** `mosquitto_passwd` 2.0's `SALT_LEN`. */
const SALT_BYTES = 12;
const HASH_BYTES = 64;
/** Mosquitto stores `iterations` in a C int. */
const MAX_ITERATIONS = 2 ** 31 - 1;
const MAX_FIELD_BYTES = 65535;
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

interface Entry {
  readonly kind: 'pbkdf2' | 'sha512';
  readonly iterations: number;
  readonly salt: Buffer;
  readonly hash: Buffer;
  readonly line: number;
}

/** C `isspace` in the C locale, as Mosquitto's `misc__trimblanks` trims. */
function cTrim(text: string): string {
  return text.replace(/^[ \t\n\v\f\r]+/, '').replace(/[ \t\n\v\f\r]+$/, '');
}

/** One `user:hash` line split the way Mosquitto does; undefined for comments and blank lines. */
function splitLine(line: string): { username: string; hash: string } | 'no-colon' | undefined {
  if (line.startsWith('#') || cTrim(line) === '') return undefined;
  const colon = line.indexOf(':');
  if (colon < 0) return 'no-colon';
  return { username: cTrim(line.slice(0, colon)), hash: cTrim(line.slice(colon + 1)) };
}

function decodeBase64(text: string, bytes: readonly number[]): Buffer | undefined {
  if (!BASE64.test(text)) return undefined;
  const buf = Buffer.from(text, 'base64');
  return bytes.includes(buf.length) ? buf : undefined;
}

/** Parses the hash part of a line; returns a problem description when it cannot be used. */
function parseHash(hash: string, line: number): Entry | string {
  if (hash.startsWith('$argon2id$')) {
    return (
      'an $argon2id$ hash (written by Mosquitto 2.1): Node.js 20 cannot verify Argon2. ' +
      'Re-create this entry with `edgebridge passwd add USER --file FILE` or with mosquitto_passwd of Mosquitto 2.0 ($7$ PBKDF2-SHA512)'
    );
  }
  if (!hash.startsWith('$')) {
    return 'the password is not hashed (a plain-text password file?): Mosquitto 2.0 accepts only $7$ (and legacy $6$) entries; re-create it with `edgebridge passwd add USER --file FILE` or convert the file with `mosquitto_passwd -U`';
  }
  const parts = hash.split('$');
  if (parts[1] === '7') {
    if (parts.length !== 5) return 'a $7$ hash must be $7$<iterations>$<base64 salt>$<base64 hash>';
    const [, , iter = '', salt64 = '', hash64 = ''] = parts;
    if (!/^[1-9][0-9]*$/.test(iter) || Number(iter) > MAX_ITERATIONS) return `invalid iteration count "${iter}" (an integer from 1 to ${MAX_ITERATIONS})`;
    const salt = decodeBase64(salt64, [SALT_BYTES, HASH_BYTES]);
    if (!salt) return `the salt "${salt64}" is not base64 of ${SALT_BYTES} (or ${HASH_BYTES}) bytes`;
    const digest = decodeBase64(hash64, [HASH_BYTES]);
    if (!digest) return `the hash is not base64 of ${HASH_BYTES} bytes`;
    return { kind: 'pbkdf2', iterations: Number(iter), salt, hash: digest, line };
  }
  if (parts[1] === '6') {
    if (parts.length !== 4) return 'a $6$ hash must be $6$<base64 salt>$<base64 hash>';
    const [, , salt64 = '', hash64 = ''] = parts;
    const salt = decodeBase64(salt64, [SALT_BYTES, HASH_BYTES]);
    if (!salt) return `the salt "${salt64}" is not base64 of ${SALT_BYTES} (or ${HASH_BYTES}) bytes`;
    const digest = decodeBase64(hash64, [HASH_BYTES]);
    if (!digest) return `the hash is not base64 of ${HASH_BYTES} bytes`;
    return { kind: 'sha512', iterations: 1, salt, hash: digest, line };
  }
  return `unsupported hash type "$${parts[1] ?? ''}$" (Mosquitto 2.0 writes $7$, and read $6$)`;
}

function pbkdf2Async(password: Buffer, salt: Buffer, iterations: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    pbkdf2(password, salt, iterations, HASH_BYTES, 'sha512', (err, key) => (err ? reject(err) : resolve(key)));
  });
}

async function digest(entry: Entry, password: Buffer): Promise<Buffer> {
  if (entry.kind === 'sha512') return createHash('sha512').update(password).update(entry.salt).digest();
  return pbkdf2Async(password, entry.salt, entry.iterations);
}

function fileError(file: string, line: number, problem: string): EdgebridgeError {
  return new EdgebridgeError('EB_ERR_AUTH_FILE', `password file ${file}:${line}: ${problem}`);
}

export class PasswordFile {
  readonly file: string;
  readonly #entries: Map<string, Entry>;
  /** Costs the same as a real check: used for unknown users and missing passwords. */
  readonly #dummy: Entry;

  private constructor(file: string, entries: Map<string, Entry>) {
    this.file = file;
    this.#entries = entries;
    const first = entries.values().next().value;
    this.#dummy = {
      kind: first?.kind ?? 'pbkdf2',
      iterations: first?.iterations ?? DEFAULT_ITERATIONS,
      salt: randomBytes(SALT_BYTES),
      hash: randomBytes(HASH_BYTES),
      line: 0,
    };
  }

  /** Reads and parses a password file; EB_ERR_AUTH_FILE when it cannot be read or a line is bad. */
  static load(file: string): PasswordFile {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      throw new EdgebridgeError('EB_ERR_AUTH_FILE', `cannot read password file ${file}: ${describeError(err)}`, { cause: err });
    }
    return PasswordFile.parse(text, file);
  }

  /** Parses the text of a password file; `file` only names it in errors. */
  static parse(text: string, file: string): PasswordFile {
    const entries = new Map<string, Entry>();
    if (text.startsWith('\uFEFF')) {
      throw fileError(file, 1, 'the file starts with a byte order mark, which Mosquitto reads as part of the first user name: save it as UTF-8 without BOM');
    }
    const lines = text.split('\n');
    for (let i = 0; i < lines.length; i++) {
      const lineNo = i + 1;
      const split = splitLine(lines[i]!);
      if (split === undefined) continue;
      if (split === 'no-colon') throw fileError(file, lineNo, 'expected "username:hash" (no ":" on this line)');
      if (split.username === '') throw fileError(file, lineNo, 'empty user name before ":"');
      if (Buffer.byteLength(split.username) > MAX_FIELD_BYTES) throw fileError(file, lineNo, `user name longer than ${MAX_FIELD_BYTES} bytes`);
      if (split.hash === '') throw fileError(file, lineNo, `no password hash for user "${split.username}"`);
      if (split.hash.includes(':')) throw fileError(file, lineNo, `a second ":" after the user name "${split.username}" (a hash never contains ":")`);
      const entry = parseHash(split.hash, lineNo);
      if (typeof entry === 'string') throw fileError(file, lineNo, `user "${split.username}": ${entry}`);
      const earlier = entries.get(split.username);
      if (earlier) throw fileError(file, lineNo, `user "${split.username}" is listed twice (also on line ${earlier.line})`);
      entries.set(split.username, entry);
    }
    return new PasswordFile(file, entries);
  }

  /** User names in file order. */
  users(): string[] {
    return [...this.#entries.keys()];
  }

  has(username: string): boolean {
    return this.#entries.has(username);
  }

  /**
   * Whether `password` is the password of `username`. Always computes one hash (against a dummy
   * entry for an unknown user or a missing password), compared in constant time, so that the time
   * taken does not tell whether a user exists.
   */
  async verify(username: string, password: Buffer | string | undefined): Promise<boolean> {
    const found = this.#entries.get(username);
    const entry = found !== undefined && password !== undefined ? found : this.#dummy;
    const given = typeof password === 'string' ? Buffer.from(password, 'utf8') : (password ?? Buffer.alloc(0));
    const computed = await digest(entry, given);
    const equal = computed.length === entry.hash.length && timingSafeEqual(computed, entry.hash);
    return equal && entry !== this.#dummy;
  }
}

/**
 * A `$7$` (PBKDF2-HMAC-SHA512) hash of `password`, as `mosquitto_passwd` 2.0 writes it: 12 random
 * salt bytes, 64 hash bytes, standard base64 with padding. Mosquitto 2.0 and 2.1 both accept it.
 */
export function hashPassword(password: string, iterations: number = DEFAULT_ITERATIONS): string {
  if (!Number.isInteger(iterations) || iterations < 1 || iterations > MAX_ITERATIONS) {
    throw new EdgebridgeError('EB_ERR_AUTH_PASSWD_INVALID', `iterations must be an integer from 1 to ${MAX_ITERATIONS}`);
  }
  const problem = passwordProblem(password);
  if (problem) throw new EdgebridgeError('EB_ERR_AUTH_PASSWD_INVALID', problem);
  const salt = randomBytes(SALT_BYTES);
  const hash = pbkdf2Sync(Buffer.from(password, 'utf8'), salt, iterations, HASH_BYTES, 'sha512');
  return `$7$${iterations}$${salt.toString('base64')}$${hash.toString('base64')}`;
}

/** Why Mosquitto's password file cannot hold this user name, or undefined if it can. */
export function usernameProblem(username: string): string | undefined {
  if (username === '') return 'the user name is empty';
  if (username.includes(':')) return 'a user name must not contain ":" (it separates name and hash in the file)';
  if (/[\u0000-\u001f\u007f]/.test(username)) return 'a user name must not contain control characters';
  if (username.startsWith('#')) return 'a user name must not start with "#" (the line would be a comment)';
  if (cTrim(username) !== username) return 'a user name must not start or end with white space (Mosquitto trims it)';
  if (Buffer.byteLength(username) > MAX_FIELD_BYTES) return `a user name must be at most ${MAX_FIELD_BYTES} bytes`;
  return undefined;
}

/** Why this password cannot be stored (so that clients could log in with it), or undefined. */
export function passwordProblem(password: string): string | undefined {
  if (password === '') return 'the password is empty';
  if (password.includes('\0')) return 'a password must not contain a NUL character (Mosquitto cuts passwords at the first NUL)';
  if (/[\r\n]/.test(password)) return 'a password must not contain a line break';
  if (Buffer.byteLength(password) > MAX_FIELD_BYTES) return `a password must be at most ${MAX_FIELD_BYTES} bytes (the MQTT limit)`;
  return undefined;
}

/** Lines with their terminators, so that edits keep every other byte. */
function linesOf(text: string): string[] {
  return text.match(/[^\n]*\n|[^\n]+$/g) ?? [];
}

function lineUser(line: string): string | undefined {
  const split = splitLine(line.replace(/\r?\n$/, ''));
  return typeof split === 'object' ? split.username : undefined;
}

/**
 * Sets `username`'s entry in the text of a password file: replaces its first line (keeping that
 * line's CRLF or LF) and drops any further lines of the same user, or appends a line. Every other
 * line is kept as it is. `hash` is a full hash such as {@link hashPassword} returns.
 */
export function setUserInText(text: string, username: string, hash: string): { text: string; added: boolean } {
  const problem = usernameProblem(username);
  if (problem) throw new EdgebridgeError('EB_ERR_AUTH_PASSWD_INVALID', problem);
  let replaced = false;
  const out: string[] = [];
  for (const line of linesOf(text)) {
    if (lineUser(line) !== username) {
      out.push(line);
      continue;
    }
    if (replaced) continue;
    replaced = true;
    const eol = /\r\n$/.test(line) ? '\r\n' : line.endsWith('\n') ? '\n' : '';
    out.push(`${username}:${hash}${eol}`);
  }
  if (!replaced) {
    const last = out[out.length - 1];
    if (last !== undefined && !last.endsWith('\n')) out[out.length - 1] = `${last}\n`;
    out.push(`${username}:${hash}\n`);
  }
  return { text: out.join(''), added: !replaced };
}

/** Removes every line of `username` from the text of a password file; the rest is kept as it is. */
export function removeUserFromText(text: string, username: string): { text: string; removed: boolean } {
  const lines = linesOf(text);
  const kept = lines.filter((line) => lineUser(line) !== username);
  return { text: kept.join(''), removed: kept.length !== lines.length };
}

/** User names of a password file's text, in order, without checking the hashes. */
export function usersInText(text: string): string[] {
  const names: string[] = [];
  for (const line of linesOf(text)) {
    const name = lineUser(line);
    if (name !== undefined && !names.includes(name)) names.push(name);
  }
  return names;
}

/**
 * Replaces `file` atomically: writes a temporary file next to it, syncs it, renames it over the
 * target (a symbolic link's target is replaced, the link kept). An existing file keeps its mode;
 * a new one gets 0600.
 */
export function writeFileAtomic(file: string, text: string): void {
  let target = file;
  let mode = 0o600;
  try {
    target = realpathSync(file);
    mode = statSync(target).mode & 0o7777;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new EdgebridgeError('EB_ERR_AUTH_FILE', `cannot write ${file}: ${describeError(err)}`, { cause: err });
    }
  }
  const tmp = join(dirname(target), `.${basename(target)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  try {
    const fd = openSync(tmp, 'wx', 0o600);
    try {
      fchmodSync(fd, mode);
      writeSync(fd, text);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, target);
  } catch (err) {
    try {
      unlinkSync(tmp);
    } catch {
      // not created, or already renamed
    }
    throw new EdgebridgeError('EB_ERR_AUTH_FILE', `cannot write ${file}: ${describeError(err)}`, { cause: err });
  }
  try {
    const dirFd = openSync(dirname(target), 'r');
    try {
      fsyncSync(dirFd);
    } finally {
      closeSync(dirFd);
    }
  } catch {
    // best effort: some file systems cannot sync a directory
  }
}

function readIfExists(file: string): string | undefined {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new EdgebridgeError('EB_ERR_AUTH_FILE', `cannot read password file ${file}: ${describeError(err)}`, { cause: err });
  }
}

/**
 * Adds `username` to the password file, or replaces its password; creates the file (mode 0600)
 * if it does not exist. Returns whether the user was new.
 */
export function addUserToFile(file: string, username: string, password: string, iterations: number = DEFAULT_ITERATIONS): { added: boolean } {
  const problem = usernameProblem(username);
  if (problem) throw new EdgebridgeError('EB_ERR_AUTH_PASSWD_INVALID', problem);
  const before = readIfExists(file) ?? '';
  const { text, added } = setUserInText(before, username, hashPassword(password, iterations));
  writeFileAtomic(file, text);
  return { added };
}

/** Removes `username` from the password file; EB_ERR_AUTH_PASSWD_INVALID if it is not there. */
export function removeUserFromFile(file: string, username: string): void {
  const before = readIfExists(file);
  if (before === undefined) throw new EdgebridgeError('EB_ERR_AUTH_FILE', `password file ${file} does not exist`);
  const { text, removed } = removeUserFromText(before, username);
  if (!removed) throw new EdgebridgeError('EB_ERR_AUTH_PASSWD_INVALID', `user "${username}" is not in ${file}`);
  writeFileAtomic(file, text);
}
