/**
 * `edgebridge passwd add|remove|list`: manages a Mosquitto 2.0 password file (mqtt.auth.passwordFile),
 * interchangeable with `mosquitto_passwd`. The password is never taken from the command line (it
 * would show in `ps` and in shell history): it is the first line of standard input when that is not
 * a terminal, else it is prompted for twice on the terminal with echo off.
 */
import { isUtf8 } from 'node:buffer';
import { StringDecoder } from 'node:string_decoder';
import { Command, InvalidArgumentError } from 'commander';
import { EdgebridgeError, describeError } from './errors.js';
import {
  DEFAULT_ITERATIONS,
  PasswordFile,
  addUserToFile,
  passwordProblem,
  removeUserFromFile,
  usernameProblem,
} from './ingress/auth/password-file.js';

/** The process's streams, replaceable in tests. */
export interface PasswdIo {
  readonly stdin: NodeJS.ReadStream;
  readonly stdout: NodeJS.WritableStream;
  readonly stderr: NodeJS.WritableStream;
  exit(code: number): never;
}

const processIo: PasswdIo = {
  get stdin() {
    return process.stdin;
  },
  get stdout() {
    return process.stdout;
  },
  get stderr() {
    return process.stderr;
  },
  exit: (code) => process.exit(code),
};

/** Ctrl-C at the prompt. */
class Interrupted extends Error {}

function iterationCount(value: string): number {
  const n = Number(value);
  if (!/^[0-9]+$/.test(value) || !Number.isSafeInteger(n) || n < 1 || n > 2 ** 31 - 1) {
    throw new InvalidArgumentError('must be an integer from 1 to 2147483647');
  }
  return n;
}

function invalid(message: string): EdgebridgeError {
  return new EdgebridgeError('EB_ERR_AUTH_PASSWD_INVALID', message);
}

/** The first line of a non-terminal standard input (without its line break); undefined if empty. */
function readFirstLine(stdin: NodeJS.ReadStream): Promise<Buffer | undefined> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let length = 0;
    const finish = (line: Buffer | undefined): void => {
      stdin.off('data', onData);
      stdin.off('end', onEnd);
      stdin.off('error', onError);
      stdin.pause();
      // Stop reading a writer that goes on (`yes | edgebridge passwd add ...`).
      stdin.destroy();
      resolve(line);
    };
    const onData = (chunk: Buffer | string): void => {
      const buf = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
      const nl = buf.indexOf(0x0a);
      if (nl < 0) {
        chunks.push(buf);
        length += buf.length;
        if (length > 1 << 20) finish(Buffer.concat(chunks));
        return;
      }
      chunks.push(buf.subarray(0, nl));
      finish(Buffer.concat(chunks));
    };
    const onEnd = (): void => finish(length === 0 ? undefined : Buffer.concat(chunks));
    const onError = (err: Error): void => {
      stdin.off('data', onData);
      stdin.off('end', onEnd);
      reject(err);
    };
    stdin.on('data', onData);
    stdin.once('end', onEnd);
    stdin.once('error', onError);
    stdin.resume();
  });
}

/** Reads one line from the terminal with echo off (raw mode); backspace and Ctrl-U edit it. */
function promptHidden(io: PasswdIo, prompt: string): Promise<string> {
  const { stdin } = io;
  if (typeof stdin.setRawMode !== 'function') {
    return Promise.reject(invalid('standard input is a terminal that cannot turn echo off; pipe the password in instead'));
  }
  io.stderr.write(prompt);
  stdin.setRawMode(true);
  stdin.resume();
  const decoder = new StringDecoder('utf8');
  return new Promise((resolve, reject) => {
    let value = '';
    const finish = (err?: Error): void => {
      stdin.off('data', onData);
      stdin.setRawMode(false);
      stdin.pause();
      io.stderr.write('\n');
      if (err) reject(err);
      else resolve(value);
    };
    const onData = (chunk: Buffer | string): void => {
      const text = typeof chunk === 'string' ? chunk : decoder.write(chunk);
      for (const ch of text) {
        if (ch === '\r' || ch === '\n') return finish();
        if (ch === '\u0003') return finish(new Interrupted('interrupted'));
        if (ch === '\u0004') return value === '' ? finish(invalid('no password given (end of input)')) : finish();
        if (ch === '\u007f' || ch === '\b') {
          value = [...value].slice(0, -1).join('');
        } else if (ch === '\u0015') {
          value = '';
        } else if (ch >= ' ') {
          value += ch;
        }
      }
    };
    stdin.on('data', onData);
  });
}

async function readPassword(io: PasswdIo): Promise<string> {
  let password: string;
  if (io.stdin.isTTY) {
    password = await promptHidden(io, 'Password: ');
    const again = await promptHidden(io, 'Reenter password: ');
    if (again !== password) throw invalid('the passwords do not match');
  } else {
    const line = await readFirstLine(io.stdin);
    if (line === undefined) throw invalid('no password on standard input (give it as the first line, or run on a terminal to be prompted)');
    if (!isUtf8(line)) throw invalid('the password on standard input is not valid UTF-8');
    password = line.toString('utf8').replace(/\r$/, '');
  }
  const problem = passwordProblem(password);
  if (problem) throw invalid(problem);
  return password;
}

/** Adds `edgebridge passwd` (add, remove, list) to the CLI. */
export function registerPasswdCommand(program: Command, io: PasswdIo = processIo): Command {
  const fail = (err: unknown): never => {
    if (err instanceof Interrupted) return io.exit(130);
    const code = err instanceof EdgebridgeError ? err.code : 'EB_ERR_UNEXPECTED';
    io.stderr.write(`edgebridge: ${code}: ${describeError(err)}\n`);
    return io.exit(err instanceof EdgebridgeError && code.startsWith('EB_ERR_CONFIG') ? 2 : 1);
  };

  const passwd = program
    .command('passwd')
    .description('manage a Mosquitto password file (mqtt.auth.passwordFile), interchangeable with mosquitto_passwd');

  passwd
    .command('add')
    .description(
      'add a user, or change its password. The password is the first line of standard input, or, on a terminal, asked for twice; never an argument',
    )
    .argument('<name>', 'user name (the MQTT username)')
    .requiredOption('-f, --file <file>', 'password file (created with mode 0600 if missing)')
    .option('--iterations <n>', 'PBKDF2-SHA512 iterations', iterationCount, DEFAULT_ITERATIONS)
    .action(async (name: string, opts: { file: string; iterations: number }) => {
      try {
        const problem = usernameProblem(name);
        if (problem) throw invalid(problem);
        const password = await readPassword(io);
        const { added } = addUserToFile(opts.file, name, password, opts.iterations);
        io.stdout.write(added ? `added user "${name}" to ${opts.file}\n` : `changed the password of "${name}" in ${opts.file}\n`);
        try {
          PasswordFile.load(opts.file);
        } catch (err) {
          io.stderr.write(`edgebridge: warning: ${describeError(err)}\n`);
        }
      } catch (err) {
        fail(err);
      }
    });

  passwd
    .command('remove')
    .description('remove a user')
    .argument('<name>', 'user name')
    .requiredOption('-f, --file <file>', 'password file')
    .action((name: string, opts: { file: string }) => {
      try {
        removeUserFromFile(opts.file, name);
        io.stdout.write(`removed user "${name}" from ${opts.file}\n`);
      } catch (err) {
        fail(err);
      }
    });

  passwd
    .command('list')
    .description('print the user names, one per line (checks every entry)')
    .requiredOption('-f, --file <file>', 'password file')
    .action((opts: { file: string }) => {
      try {
        for (const user of PasswordFile.load(opts.file).users()) io.stdout.write(`${user}\n`);
      } catch (err) {
        fail(err);
      }
    });

  return passwd;
}
