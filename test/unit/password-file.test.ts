import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, existsSync, lstatSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EdgebridgeError } from '../../src/errors.js';
import {
  PasswordFile,
  addUserToFile,
  hashPassword,
  removeUserFromFile,
  removeUserFromText,
  setUserInText,
  usersInText,
  writeFileAtomic,
} from '../../src/ingress/auth/password-file.js';
import { mosquittoTool, startMosquitto, type MosquittoBroker } from '../helpers/mosquitto.js';
import { useTmpDirs } from '../helpers/tmp.js';

const ROOT = join(import.meta.dirname, '..', '..');
const CLI_PASSWD = join(ROOT, 'dist', 'src', 'cli-passwd.js');
/** A CLI with only `passwd`, as src/cli.ts registers it. */
const CLI_SCRIPT = `
import { Command } from 'commander';
import { registerPasswdCommand } from ${JSON.stringify(CLI_PASSWD)};
const program = new Command('edgebridge');
registerPasswdCommand(program);
await program.parseAsync();
`;

function runCli(args: string[], input?: string): { status: number | null; stdout: string; stderr: string } {
  if (!existsSync(CLI_PASSWD)) throw new Error(`${CLI_PASSWD} is missing: run \`npm run build\` first`);
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', CLI_SCRIPT, '--', ...args], {
    cwd: ROOT,
    encoding: 'utf8',
    timeout: 20_000,
    ...(input === undefined ? { stdio: ['ignore', 'pipe', 'pipe'] } : { input }),
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function mosquittoPasswd(args: string[]): void {
  const r = spawnSync(mosquittoTool('mosquitto_passwd'), args, { encoding: 'utf8', timeout: 20_000 });
  if (r.status !== 0) throw new Error(`mosquitto_passwd ${args.join(' ')} failed (${r.status}): ${r.stderr}${r.stdout}`);
}

/** A legacy `$6$` entry: SHA-512 of password then salt, as Mosquitto 1.x wrote. */
function sha512Entry(password: string): string {
  const salt = randomBytes(12);
  const hash = createHash('sha512').update(password).update(salt).digest();
  return `$6$${salt.toString('base64')}$${hash.toString('base64')}`;
}

function parseError(text: string): EdgebridgeError {
  try {
    PasswordFile.parse(text, '/etc/pw');
  } catch (err) {
    expect(err).toBeInstanceOf(EdgebridgeError);
    expect((err as EdgebridgeError).code).toBe('EB_ERR_AUTH_FILE');
    return err as EdgebridgeError;
  }
  throw new Error('expected a parse error');
}

describe('password file (Mosquitto 2.0 format)', () => {
  const tmp = useTmpDirs();

  it('accepts the passwords of a file written by the real mosquitto_passwd, and refuses wrong ones', async () => {
    const file = join(tmp(), 'pw');
    mosquittoPasswd(['-c', '-b', file, 'alice', 'p:ss wörd ✓']);
    mosquittoPasswd(['-b', file, 'bob smith', 'secret']);
    expect(readFileSync(file, 'utf8')).toMatch(/^alice:\$7\$101\$[A-Za-z0-9+/]{16}\$[A-Za-z0-9+/]{86}==$/m);

    const pw = PasswordFile.load(file);
    expect(pw.users()).toEqual(['alice', 'bob smith']);
    expect(pw.has('alice')).toBe(true);
    expect(await pw.verify('alice', 'p:ss wörd ✓')).toBe(true);
    expect(await pw.verify('alice', Buffer.from('p:ss wörd ✓'))).toBe(true);
    expect(await pw.verify('bob smith', 'secret')).toBe(true);
    expect(await pw.verify('alice', 'p:ss word ✓')).toBe(false);
    // Mosquitto cuts the password at a NUL byte; we do not (a trailing NUL is the same HMAC key anyway).
    expect(await pw.verify('alice', 'p:ss wörd ✓\0junk')).toBe(false);
    expect(await pw.verify('alice', 'secret')).toBe(false);
    expect(await pw.verify('bob smith', 'p:ss wörd ✓')).toBe(false);
    expect(await pw.verify('bob', 'secret')).toBe(false);
    expect(await pw.verify('alice', undefined)).toBe(false);
    expect(await pw.verify('alice', '')).toBe(false);
    expect(await pw.verify('nobody', 'secret')).toBe(false);
  });

  it('hashPassword writes what mosquitto_passwd writes: $7$, 101 iterations, 12-byte salt, 64-byte PBKDF2-SHA512', async () => {
    const entry = hashPassword('hunter2');
    expect(entry).toMatch(/^\$7\$101\$[A-Za-z0-9+/]{16}\$[A-Za-z0-9+/]{86}==$/);
    expect(hashPassword('hunter2')).not.toBe(entry); // a random salt each time
    expect(hashPassword('x', 5000)).toMatch(/^\$7\$5000\$/);
    const pw = PasswordFile.parse(`u:${entry}\nv:${sha512Entry('legacy')}\n`, 'mem');
    expect(await pw.verify('u', 'hunter2')).toBe(true);
    expect(await pw.verify('v', 'legacy')).toBe(true);
    expect(await pw.verify('v', 'legacyx')).toBe(false);
    expect(() => hashPassword('')).toThrow(/empty/);
    expect(() => hashPassword('a', 0)).toThrow(/iterations/);
  });

  it('skips comments and blank lines, trims blanks around user and hash (CRLF files), as Mosquitto does', async () => {
    const text = `# users\r\n\r\n  \n alice :  ${hashPassword('a')} \r\n#bob:${hashPassword('b')}\nbob:${hashPassword('b')}`;
    const pw = PasswordFile.parse(text, 'mem');
    expect(pw.users()).toEqual(['alice', 'bob']);
    expect(await pw.verify('alice', 'a')).toBe(true);
    expect(await pw.verify('bob', 'b')).toBe(true);
  });

  it.each([
    ['alice', /pw:1: expected "username:hash"/],
    [':$7$101$AAAAAAAAAAAAAAAA$x', /pw:1: empty user name/],
    ['alice:', /pw:1: no password hash for user "alice"/],
    ['alice:hunter2', /pw:1: user "alice": the password is not hashed.*edgebridge passwd add/],
    ['alice:$5$abc$def', /unsupported hash type "\$5\$"/],
    ['alice:$7$0$AAAAAAAAAAAAAAAA$' + 'A'.repeat(86) + '==', /invalid iteration count "0"/],
    ['alice:$7$101$AAAA$' + 'A'.repeat(86) + '==', /salt "AAAA" is not base64 of 12/],
    ['alice:$7$101$AAAAAAAAAAAAAAAA$AAAA', /hash is not base64 of 64 bytes/],
    ['alice:$7$101$AAAAAAAAAAAAAAAA', /\$7\$<iterations>\$<base64 salt>\$<base64 hash>/],
    ['alice:$7$101$AAAA AAAAAAAAAAAA$' + 'A'.repeat(86) + '==', /salt/],
    ['alice:$7$101$AAAAAAAAAAAAAAAA$' + 'A'.repeat(86) + '==:x', /a second ":"/],
    ['\uFEFFalice:x', /byte order mark/],
  ])('refuses %j naming file and line', (line, message) => {
    expect(parseError(`${line}\n`).message).toMatch(message);
  });

  it('names the line of a problem further down, and a user listed twice', () => {
    const ok = `alice:${hashPassword('a')}`;
    expect(parseError(`# c\n${ok}\n\nbroken\n`).message).toMatch(/^password file \/etc\/pw:4: /);
    expect(parseError(`${ok}\n${ok}\n`).message).toMatch(/pw:2: user "alice" is listed twice \(also on line 1\)/);
  });

  it('refuses Mosquitto 2.1 $argon2id$ entries with a hint to re-create them, without crashing', () => {
    const text = `alice:${hashPassword('a')}\nbob:$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA\n`;
    const err = parseError(text);
    expect(err.message).toContain('/etc/pw:2');
    expect(err.message).toContain('"bob"');
    expect(err.message).toMatch(/argon2id.*Node\.js 20 cannot verify Argon2.*edgebridge passwd add USER --file FILE.*mosquitto_passwd of Mosquitto 2\.0/);
  });

  it('an unreadable file is EB_ERR_AUTH_FILE naming it', () => {
    const file = join(tmp(), 'missing');
    expect(() => PasswordFile.load(file)).toThrow(expect.objectContaining({ code: 'EB_ERR_AUTH_FILE', message: expect.stringContaining(file) }));
  });

  it('an unknown user or a missing password costs one hash computation, like a wrong password', async () => {
    const pw = PasswordFile.parse(`alice:${hashPassword('a', 40_000)}\n`, 'mem');
    const time = async (user: string, password: string | undefined): Promise<number> => {
      let best = Infinity;
      for (let i = 0; i < 3; i++) {
        const start = process.hrtime.bigint();
        expect(await pw.verify(user, password)).toBe(false);
        best = Math.min(best, Number(process.hrtime.bigint() - start) / 1e6);
      }
      return best;
    };
    const wrong = await time('alice', 'b');
    expect(await time('nobody', 'b')).toBeGreaterThan(wrong / 3);
    expect(await time('alice', undefined)).toBeGreaterThan(wrong / 3);
  });

  describe('editing', () => {
    it('sets and removes a user, keeping comments, blank lines, CRLF and entries it cannot read', () => {
      const text = `# managed by hand\r\n\r\nalice:$argon2id$v=19$x\r\n  # not a comment for Mosquitto, kept anyway\nbob:OLD\nbob:OLDER\ncarol:C`;
      const updated = setUserInText(text, 'bob', 'NEW');
      expect(updated).toEqual({
        added: false,
        text: `# managed by hand\r\n\r\nalice:$argon2id$v=19$x\r\n  # not a comment for Mosquitto, kept anyway\nbob:NEW\ncarol:C`,
      });
      const fixed = setUserInText(updated.text, 'alice', 'FIXED');
      expect(fixed.text).toBe(`# managed by hand\r\n\r\nalice:FIXED\r\n  # not a comment for Mosquitto, kept anyway\nbob:NEW\ncarol:C`);
      const added = setUserInText(fixed.text, 'dave', 'D');
      expect(added).toEqual({ added: true, text: `${fixed.text}\ndave:D\n` });
      expect(setUserInText('', 'erin', 'E')).toEqual({ added: true, text: 'erin:E\n' });
      expect(usersInText(added.text)).toEqual(['alice', 'bob', 'carol', 'dave']);
      expect(removeUserFromText(added.text, 'bob')).toEqual({
        removed: true,
        text: `# managed by hand\r\n\r\nalice:FIXED\r\n  # not a comment for Mosquitto, kept anyway\ncarol:C\ndave:D\n`,
      });
      expect(removeUserFromText(added.text, 'nobody')).toEqual({ removed: false, text: added.text });
    });

    it.each([['a:b'], [''], ['#admin'], [' alice'], ['alice\t'], ['a\nb'], ['a\u0007']])('refuses the user name %j', (name) => {
      expect(() => setUserInText('', name, 'X')).toThrow(expect.objectContaining({ code: 'EB_ERR_AUTH_PASSWD_INVALID' }));
    });

    it('writes atomically: a new file gets mode 0600, an existing one keeps its mode, a symbolic link stays a link', async () => {
      const dir = tmp();
      const file = join(dir, 'pw');
      expect(addUserToFile(file, 'alice', 'a')).toEqual({ added: true });
      expect(statSync(file).mode & 0o777).toBe(0o600);
      chmodSync(file, 0o640);
      expect(addUserToFile(file, 'alice', 'a2')).toEqual({ added: false });
      expect(statSync(file).mode & 0o777).toBe(0o640);
      const link = join(dir, 'link');
      symlinkSync(file, link);
      addUserToFile(link, 'bob', 'b');
      expect(lstatSync(link).isSymbolicLink()).toBe(true);
      const pw = PasswordFile.load(file);
      expect(pw.users()).toEqual(['alice', 'bob']);
      expect(await pw.verify('alice', 'a2')).toBe(true);
      removeUserFromFile(file, 'alice');
      expect(PasswordFile.load(file).users()).toEqual(['bob']);
      expect(() => removeUserFromFile(file, 'alice')).toThrow(expect.objectContaining({ code: 'EB_ERR_AUTH_PASSWD_INVALID' }));
      writeFileAtomic(file, 'x');
      expect(readFileSync(file, 'utf8')).toBe('x');
      expect(() => writeFileAtomic(join(dir, 'no', 'such', 'dir'), 'x')).toThrow(expect.objectContaining({ code: 'EB_ERR_AUTH_FILE' }));
    });
  });

  describe('one file, written by edgebridge passwd, mosquitto_passwd and by hand, used by a real mosquitto 2.0', () => {
    let dir: string;
    let file: string;
    let broker: MosquittoBroker | undefined;
    const users: Record<string, string> = {
      carol: 'c:ärol pw',
      alice: 'p:ss wörd',
      dave: 'dave pw',
      erin: 'legacy $6$',
    };

    const mosquittoAccepts = (user: string, password: string): number | null => {
      const r = spawnSync(
        mosquittoTool('mosquitto_pub'),
        ['-h', '127.0.0.1', '-p', String(broker!.port), '-u', user, '-P', password, '-t', 't', '-m', 'm', '-q', '1'],
        { encoding: 'utf8', timeout: 20_000 },
      );
      return r.status;
    };

    beforeAll(async () => {
      dir = mkdtempSync(join(tmpdir(), 'edgebridge-pw-'));
      file = join(dir, 'passwd');
      // edgebridge passwd creates the file (mode 0600), the password from standard input
      const add = runCli(['passwd', 'add', 'carol', '--file', file], `${users.carol}\nignored second line\n`);
      expect(add, add.stderr).toMatchObject({ status: 0, stdout: `added user "carol" to ${file}\n` });
      expect(statSync(file).mode & 0o777).toBe(0o600);
      // mosquitto_passwd edits it
      mosquittoPasswd(['-b', file, 'alice', users.alice!]);
      // the library adds one with more iterations
      addUserToFile(file, 'dave', users.dave!, 1000);
      // and by hand: comments, a blank line, a legacy $6$ entry with CRLF
      writeFileSync(file, `# edgebridge MQTT users\n\n${readFileSync(file, 'utf8')}erin:${sha512Entry(users.erin!)}\r\n`);
      broker = await startMosquitto(`password_file ${file}\nallow_anonymous false\n`);
    });

    afterAll(async () => {
      await broker?.stop();
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    it('mosquitto and PasswordFile accept the same passwords and refuse the same wrong ones', async () => {
      const pw = PasswordFile.load(file);
      expect(pw.users()).toEqual(['carol', 'alice', 'dave', 'erin']);
      for (const [user, password] of Object.entries(users)) {
        expect({ user, mosquitto: mosquittoAccepts(user, password), edgebridge: await pw.verify(user, password) }).toEqual({ user, mosquitto: 0, edgebridge: true });
        const wrong = `${password}x`;
        expect({ user, mosquitto: mosquittoAccepts(user, wrong), edgebridge: await pw.verify(user, wrong) }).toEqual({ user, mosquitto: 5, edgebridge: false });
      }
      expect(mosquittoAccepts('nobody', 'x')).toBe(5);
      expect(await pw.verify('nobody', 'x')).toBe(false);
    });

    it('edgebridge passwd list and remove keep the other lines', () => {
      const copy = join(tmp(), 'copy');
      writeFileSync(copy, readFileSync(file));
      expect(runCli(['passwd', 'list', '--file', copy])).toMatchObject({ status: 0, stdout: 'carol\nalice\ndave\nerin\n' });
      expect(runCli(['passwd', 'remove', 'dave', '--file', copy])).toMatchObject({ status: 0, stdout: `removed user "dave" from ${copy}\n` });
      expect(runCli(['passwd', 'list', '--file', copy])).toMatchObject({ status: 0, stdout: 'carol\nalice\nerin\n' });
      expect(readFileSync(copy, 'utf8')).toMatch(/^# edgebridge MQTT users\n\ncarol:/);
    });
  });

  describe('edgebridge passwd', () => {
    it('changes a password read from standard input; refuses bad input with exit code 1', async () => {
      const file = join(tmp(), 'pw');
      expect(runCli(['passwd', 'add', 'dev-1', '--file', file, '--iterations', '2000'], 'first\r\n')).toMatchObject({ status: 0 });
      expect(runCli(['passwd', 'add', 'dev-1', '--file', file], 'second')).toMatchObject({
        status: 0,
        stdout: `changed the password of "dev-1" in ${file}\n`,
      });
      const pw = PasswordFile.load(file);
      expect(await pw.verify('dev-1', 'second')).toBe(true);
      expect(await pw.verify('dev-1', 'first')).toBe(false);

      const before = readFileSync(file, 'utf8');
      const refused = [
        runCli(['passwd', 'add', 'dev-2', '--file', file]), // standard input is /dev/null
        runCli(['passwd', 'add', 'a:b', '--file', file], 'pw\n'),
        runCli(['passwd', 'remove', 'dev-2', '--file', file]),
      ];
      for (const r of refused) {
        expect(r.status, r.stderr).toBe(1);
        expect(r.stderr).toMatch(/^edgebridge: EB_ERR_AUTH_PASSWD_INVALID: /);
      }
      expect(readFileSync(file, 'utf8')).toBe(before);
      // never a password as an argument
      const extra = runCli(['passwd', 'add', 'dev-2', 'secret', '--file', file], 'pw\n');
      expect(extra.status).toBe(1);
      expect(extra.stderr).toMatch(/too many arguments/);
      expect(readFileSync(file, 'utf8')).toBe(before);

      const missing = runCli(['passwd', 'list', '--file', join(tmp(), 'none')]);
      expect(missing.status).toBe(1);
      expect(missing.stderr).toMatch(/^edgebridge: EB_ERR_AUTH_FILE: cannot read password file/);
      const noFile = runCli(['passwd', 'add', 'x'], 'pw\n');
      expect(noFile.status).toBe(1);
      expect(noFile.stderr).toMatch(/--file/);
    });

    it('on a terminal, prompts twice with echo off', async () => {
      const script = '/usr/bin/script';
      if (!existsSync(CLI_PASSWD)) throw new Error(`${CLI_PASSWD} is missing: run \`npm run build\` first`);
      expect(existsSync(script), 'util-linux script(1) is needed to give the CLI a terminal').toBe(true);
      const file = join(tmp(), 'pw');
      const command = [process.execPath, '--input-type=module', '-e', CLI_SCRIPT, '--', 'passwd', 'add', 'tty-user', '--file', file]
        .map((a) => `'${a.replace(/'/g, `'\\''`)}'`)
        .join(' ');
      const child = spawn(script, ['-qfec', command, '/dev/null'], { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'] });
      let output = '';
      child.stdout.on('data', (d: Buffer) => (output += d.toString()));
      child.stderr.on('data', (d: Buffer) => (output += d.toString()));
      const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
      const until = async (what: RegExp): Promise<void> => {
        const deadline = Date.now() + 15_000;
        while (!what.test(output)) {
          if (Date.now() > deadline || child.exitCode !== null) throw new Error(`no ${what} from the prompt; output: ${output}`);
          await new Promise((r) => setTimeout(r, 10));
        }
      };
      await until(/Password: /);
      child.stdin.write('tty sëcret\r');
      await until(/Reenter password: /);
      child.stdin.write('tty sëcret\r');
      const code = await exited;
      expect(code, output).toBe(0);
      expect(output).toContain(`added user "tty-user"`);
      expect(output).not.toContain('sëcret');
      expect(await PasswordFile.load(file).verify('tty-user', 'tty sëcret')).toBe(true);
    });
  });
});
