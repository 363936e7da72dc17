/**
 * Mosquitto 2.0 ACL files (`acl_file`), parsed and evaluated the way Mosquitto 2.0.11 does.
 *
 * Syntax, from src/security_default.c `aclfile__parse` (and mosquitto.conf(5), "acl_file"):
 * - Trailing white space is stripped; a line whose FIRST character is `#` is a comment (an indented
 *   `#` is not: Mosquitto refuses it as an invalid line, and so do we); blank lines are skipped.
 * - Fields are separated by spaces (not tabs); leading spaces are skipped. Keywords are lower case.
 * - `user <name>`: the name is the rest of the line, trimmed (it may contain spaces). The `topic`
 *   lines that follow apply to that user (a later `user` line for the same name adds to its list).
 * - `topic [read|write|readwrite|deny] <topic>`: the topic is the rest of the line after the access
 *   word, trimmed. With a single word, that word is the topic and the access is readwrite, so
 *   `topic read` grants readwrite on the topic "read" (we add a warning). `topic` lines before the
 *   first `user` line apply to anonymous clients (no username) only.
 * - `pattern [access] <topic>`: for every client, with `%c` replaced by the client id and `%u` by the
 *   username anywhere in the string (2.0.11 does not require a whole level, although the manual
 *   says it must be; 2.1 does); a pattern with `%u` does not apply to anonymous clients.
 * - The topic must be a valid subscription filter (`mosquitto_sub_topic_check`: `+` and `#` fill a
 *   whole level, `#` last; at most 65535 bytes and 200 `/`).
 *
 * Evaluation, from `mosquitto_acl_check_default` and src/security.c `mosquitto_acl_check`:
 * 1. Broker rules first (`acl__check_dollar`): publishing to `$SYS...` is denied (except the bridge
 *    state topic `$SYS/broker/connection/+/state`), publishing to or reading `$share...` is denied.
 * 2. The client's own list (its `user` section, or the anonymous lines), deny lines first: a
 *    matching deny line denies; a matching line with the access wanted allows. A matching line
 *    without that access (a `read` line for a publish) is passed over.
 * 3. Only if the list decided nothing, and there are pattern lines: a username or client id
 *    containing `+` or `#` is denied everything (so that `%c`/`%u` cannot inject wildcards).
 * 4. Pattern lines, deny lines first, as in 2.
 * 5. Nothing matched: Mosquitto denies. We answer 'none' and the caller applies its default rule.
 * So a deny line wins within its list, but a user's own `topic` grant is decided before a
 * `pattern deny` (Mosquitto's order, which we keep, rather than "any deny wins").
 * Matching is `mosquitto_topic_matches_sub`: MQTT wildcards (`a/#` also matches `a`, `+` matches an
 * empty level), and a topic starting with `$` matches only an ACL topic starting with `$`.
 *
 * Where we differ, on purpose:
 * - SUBSCRIBE: Mosquitto 2.0.11 does not check subscriptions against the ACL file at all (its
 *   default check returns success, "FIXME - implement ACL subscription strings"): every SUBSCRIBE
 *   is granted and each message is then filtered by `read`. `check('subscribe', filter)` instead
 *   allows a filter only if a line with read access covers everything the filter can match, as
 *   `mosquitto_sub_matches_acl` does in Mosquitto 2.1 and the dynamic-security plugin does in 2.0
 *   (`sub_acl_check`): a wildcard in the filter needs a wildcard at that level of the ACL topic
 *   (`sensors/#` covers `sensors/+/temp` and `sensors/#`; `sensors/a` does not cover `sensors/+`; a
 *   `#` needs a `#` at that level or before). A deny line denies when it covers the filter; parts
 *   of a granted filter that a deny line names are still filtered per message by `read`.
 *   `$share/<group>/<filter>` is checked as `<filter>`.
 * - A client id or username containing `/` makes the patterns that substitute it not match (2.0.11
 *   would let client "a/b" reach "devices/a/b/..." through `devices/%c/#`; 2.1 refuses it too).
 * - A topic name with a wildcard, or an invalid filter, is 'deny' (Mosquitto: no match).
 */
import { readFileSync } from 'node:fs';
import { EdgebridgeError, describeError } from '../../errors.js';

export type AclAccess = 'read' | 'write' | 'subscribe';
export type AclVerdict = 'allow' | 'deny' | 'none';

type RuleAccess = 'read' | 'write' | 'readwrite' | 'deny';

interface Rule {
  readonly access: RuleAccess;
  readonly topic: string;
  /** Levels of `topic`, for `topic` lines (patterns are split after substitution). */
  readonly levels: readonly string[];
  readonly line: number;
  readonly usesClientId: boolean;
  readonly usesUsername: boolean;
}

/** C `isspace` in the C locale: what Mosquitto's `misc__trimblanks` and line stripping remove. */
const C_SPACE_END = /[ \t\n\v\f\r]+$/;
function cTrim(text: string): string {
  return text.replace(/^[ \t\n\v\f\r]+/, '').replace(C_SPACE_END, '');
}

/** Mosquitto's `TOPIC_HIERARCHY_LIMIT`. */
const MAX_SLASHES = 200;
const MAX_TOPIC_BYTES = 65535;

/** `mosquitto_sub_topic_check`: the problem with a filter, or undefined if it is valid. */
function filterProblem(filter: string): string | undefined {
  if (Buffer.byteLength(filter) > MAX_TOPIC_BYTES) return `longer than ${MAX_TOPIC_BYTES} bytes`;
  const levels = filter.split('/');
  if (levels.length - 1 > MAX_SLASHES) return `more than ${MAX_SLASHES} levels`;
  for (let i = 0; i < levels.length; i++) {
    const level = levels[i]!;
    if (level.includes('#') && (level !== '#' || i !== levels.length - 1)) return '"#" must be a whole level, and the last one';
    if (level.includes('+') && level !== '+') return '"+" must be a whole level';
  }
  return undefined;
}

/** Whether a topic name matches a filter (`mosquitto_topic_matches_sub`), both given as levels. */
function topicMatches(filter: readonly string[], topic: readonly string[]): boolean {
  if (topic[0]!.startsWith('$') !== filter[0]!.startsWith('$')) return false;
  for (let i = 0; i < filter.length; i++) {
    const f = filter[i]!;
    if (f === '#') return true;
    if (i >= topic.length) return false;
    if (f !== '+' && f !== topic[i]) return false;
  }
  return filter.length === topic.length;
}

/**
 * Whether an ACL topic covers every topic a subscription filter can match
 * (`mosquitto_sub_matches_acl` of Mosquitto 2.1).
 */
function filterCovered(acl: readonly string[], filter: readonly string[]): boolean {
  if (filter[0]!.startsWith('$') !== acl[0]!.startsWith('$')) return false;
  for (let i = 0; i < acl.length; i++) {
    const a = acl[i]!;
    if (a === '#') return true;
    if (i >= filter.length) return false;
    const f = filter[i]!;
    if (f === '#') return false;
    if (a !== '+' && a !== f) return false;
  }
  return acl.length === filter.length;
}

function grants(rule: RuleAccess, access: AclAccess): boolean {
  if (rule === 'readwrite') return true;
  if (access === 'write') return rule === 'write';
  return rule === 'read';
}

/** `pattern` substitution as in 2.0.11: every `%c` and `%u`, left to right. */
function substitute(topic: string, clientId: string, username: string | undefined): string {
  let out = '';
  for (let i = 0; i < topic.length; i++) {
    const ch = topic[i]!;
    if (ch === '%' && i < topic.length - 1) {
      const next = topic[i + 1];
      if (next === 'c') {
        out += clientId;
        i++;
        continue;
      }
      if (next === 'u' && username !== undefined) {
        out += username;
        i++;
        continue;
      }
    }
    out += ch;
  }
  return out;
}

function fileError(file: string, line: number, problem: string): EdgebridgeError {
  return new EdgebridgeError('EB_ERR_AUTH_FILE', `ACL file ${file}:${line}: ${problem}`);
}

/** Deny lines first, the others in file order (Mosquitto's `add__acl`). */
function denyFirst(rules: Rule[]): Rule[] {
  return [...rules.filter((r) => r.access === 'deny'), ...rules.filter((r) => r.access !== 'deny')];
}

export class AclFile {
  readonly file: string;
  /** Things Mosquitto accepts but that are probably not meant (it logs some of them too). */
  readonly warnings: readonly string[];
  readonly #anonymous: readonly Rule[] | undefined;
  readonly #users: ReadonlyMap<string, readonly Rule[]>;
  readonly #patterns: readonly Rule[];

  private constructor(file: string, anonymous: Rule[] | undefined, users: Map<string, Rule[]>, patterns: Rule[], warnings: string[]) {
    this.file = file;
    this.#anonymous = anonymous && denyFirst(anonymous);
    this.#users = new Map([...users].map(([name, rules]) => [name, denyFirst(rules)]));
    this.#patterns = denyFirst(patterns);
    this.warnings = warnings;
  }

  /** Reads and parses an ACL file; EB_ERR_AUTH_FILE when it cannot be read or a line is bad. */
  static load(file: string): AclFile {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      throw new EdgebridgeError('EB_ERR_AUTH_FILE', `cannot read ACL file ${file}: ${describeError(err)}`, { cause: err });
    }
    return AclFile.parse(text, file);
  }

  /** Parses the text of an ACL file; `file` only names it in errors. */
  static parse(text: string, file: string): AclFile {
    let anonymous: Rule[] | undefined;
    const users = new Map<string, Rule[]>();
    const patterns: Rule[] = [];
    const warnings: string[] = [];
    let user: string | undefined;
    const lines = text.split('\n');
    for (let i = 0; i < lines.length; i++) {
      const lineNo = i + 1;
      const line = lines[i]!.replace(C_SPACE_END, '');
      if (line.startsWith('#')) continue;
      const body = line.replace(/^ +/, '');
      if (body === '') continue;
      const space = body.indexOf(' ');
      const keyword = space < 0 ? body : body.slice(0, space);
      const rest = space < 0 ? '' : body.slice(space + 1);
      if (keyword === 'user') {
        const name = cTrim(rest);
        if (name === '') throw fileError(file, lineNo, '"user" without a user name');
        user = name;
        continue;
      }
      if (keyword !== 'topic' && keyword !== 'pattern') {
        const hint = keyword.startsWith('#')
          ? ' (a comment must start with "#" in the first column)'
          : keyword.startsWith('\uFEFF')
            ? ' (the file starts with a byte order mark: save it as UTF-8 without BOM)'
            : /\s/.test(keyword)
              ? ' (separate the words with spaces, not tabs)'
              : '';
        throw fileError(file, lineNo, `expected "user", "topic" or "pattern", found "${keyword}"${hint}`);
      }
      const afterSpaces = rest.replace(/^ +/, '');
      if (afterSpaces === '') throw fileError(file, lineNo, `"${keyword}" without a topic`);
      const space2 = afterSpaces.indexOf(' ');
      let access: RuleAccess;
      let topic: string;
      if (space2 < 0) {
        topic = afterSpaces;
        access = 'readwrite';
        if (['read', 'write', 'readwrite', 'deny'].includes(topic)) {
          warnings.push(`ACL file ${file}:${lineNo}: "${keyword} ${topic}" grants readwrite on the topic named "${topic}" (as Mosquitto reads it); write "${keyword} ${topic} <topic>" to give an access`);
        }
      } else {
        const word = afterSpaces.slice(0, space2);
        topic = cTrim(afterSpaces.slice(space2 + 1));
        if (word !== 'read' && word !== 'write' && word !== 'readwrite' && word !== 'deny') {
          throw fileError(file, lineNo, `invalid access "${word}" (read, write, readwrite or deny; a topic containing spaces needs the access word before it)`);
        }
        access = word;
      }
      const problem = filterProblem(topic);
      if (problem) throw fileError(file, lineNo, `invalid topic "${topic}": ${problem}`);
      if (/[\u0000-\u001f\u007f]/.test(topic)) {
        warnings.push(`ACL file ${file}:${lineNo}: the topic ${JSON.stringify(topic)} contains a tab or control character (fields are separated by spaces only)`);
      }
      const rule: Rule = {
        access,
        topic,
        levels: topic.split('/'),
        line: lineNo,
        usesClientId: topic.includes('%c'),
        usesUsername: topic.includes('%u'),
      };
      if (keyword === 'pattern') {
        if (!rule.usesClientId && !rule.usesUsername) {
          warnings.push(`ACL file ${file}:${lineNo}: pattern "${topic}" contains neither %c nor %u (it applies to every client)`);
        }
        patterns.push(rule);
      } else if (user === undefined) {
        (anonymous ??= []).push(rule);
      } else {
        let list = users.get(user);
        if (!list) users.set(user, (list = []));
        list.push(rule);
      }
    }
    return new AclFile(file, anonymous, users, patterns, warnings);
  }

  /** User names with a `user` section, in file order. */
  users(): string[] {
    return [...this.#users.keys()];
  }

  /**
   * The ACL file's verdict for `who` doing `access` on a topic (read, write) or a subscription
   * filter (subscribe): 'deny', 'allow', or 'none' when no line applies (Mosquitto then denies;
   * the caller applies its own default). See the header for the rules.
   */
  check(access: AclAccess, topicOrFilter: string, who: { username?: string | undefined; clientId: string }): AclVerdict {
    let subject = topicOrFilter;
    if (subject.startsWith('$share')) {
      if (access !== 'subscribe') return 'deny';
      if (subject.startsWith('$share/')) {
        const m = /^\$share\/[^/+#]+\/(.+)$/.exec(subject);
        if (!m) return 'deny';
        subject = m[1]!;
      }
    }
    if (access === 'write' && subject.startsWith('$SYS')) {
      if (!topicMatches(['$SYS', 'broker', 'connection', '+', 'state'], subject.split('/'))) return 'deny';
    }
    if (subject === '') return 'deny';
    if (access === 'subscribe') {
      if (filterProblem(subject)) return 'deny';
    } else if (/[+#]/.test(subject)) {
      return 'deny';
    }
    const levels = subject.split('/');
    const matches = access === 'subscribe' ? filterCovered : topicMatches;

    const own = who.username === undefined ? this.#anonymous : this.#users.get(who.username);
    for (const rule of own ?? []) {
      if (!matches(rule.levels, levels)) continue;
      if (rule.access === 'deny') return 'deny';
      if (grants(rule.access, access)) return 'allow';
    }

    if (this.#patterns.length === 0) return 'none';
    if (/[+#]/.test(who.clientId) || (who.username !== undefined && /[+#]/.test(who.username))) return 'deny';
    for (const rule of this.#patterns) {
      if (rule.usesUsername && who.username === undefined) continue;
      if (rule.usesClientId && who.clientId.includes('/')) continue;
      if (rule.usesUsername && who.username!.includes('/')) continue;
      const topic = substitute(rule.topic, who.clientId, who.username);
      if (!matches(topic.split('/'), levels)) continue;
      if (rule.access === 'deny') return 'deny';
      if (grants(rule.access, access)) return 'allow';
    }
    return 'none';
  }
}
