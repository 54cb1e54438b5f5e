'use strict';
// The one error type of the client. Messages name sockets, projects, names
// and numbers; never a value (the daemon's messages carry none either).

/**
 * Codes 1-12 and 20-24 are the daemon's ERROR codes (docs/protocol.md);
 * 100 and up are this client's own and never appear on the wire.
 * @type {Readonly<Record<string, number>>}
 */
const codes = Object.freeze({
  'malformed': 1,
  'unsupported-version': 2,
  'unknown-type': 3,
  'frame-too-large': 4,
  'invalid-name': 5,
  'too-many-names': 6,
  'not-allowed': 7,
  'busy': 8,
  'timeout': 9,
  'internal-error': 10,
  'reply-too-large': 11,
  'unexpected': 12,
  'store-unavailable': 13,
  'not-mounted': 20,
  'mount-refused': 21,
  'mount-failed': 22,
  'invalid-project': 23,
  'invalid-request': 24,
  // The client's own.
  'problems': 100,            // PROBLEMS: the document cannot be resolved; see `problems`
  'not-running': 101,         // no socket at the path (ENOENT)
  'connection-refused': 102,  // a socket file nobody answers on (ECONNREFUSED)
  'permission-denied': 103,   // the kernel refused connect(2) (EACCES, EPERM)
  'path-too-long': 104,       // the path does not fit a Unix socket address
  'untrusted-server': 105,    // the socket is not owned by root, us, or its directory's owner
  'connection-closed': 106,   // the daemon closed, or the client was closed
  'timed-out': 107,           // no connection or no reply in time
  'malformed-reply': 108,     // a reply that does not parse or was not expected
  'system': 109,              // any other system error (see `errno`)
  'invalid-argument': 110,    // a call's argument of the wrong type or value (checked before anything is sent)
});

const names = Object.freeze(Object.fromEntries(Object.entries(codes).map(([k, v]) => [v, k])));

/** Codes after which the daemon closes the connection. */
const closing = new Set([2, 4, 7, 8, 9, 12]);

/** Hints, where one helps. */
const hints = {
  'not-allowed': "the daemon's allow-list does not include this user; start it with --allow-uid or --allow-group",
  'busy': 'too many connections to the resolver daemon; retry shortly',
  'unsupported-version': 'the client and the resolver daemon are different secretfs versions',
  'internal-error': "see the resolver daemon's log",
  'mount-failed': "see the resolver daemon's log",
  'reply-too-large': 'ask for fewer names at a time',
  'not-mounted': "mount the project (secretfs mount PROJECT DIR) with the daemon's --runtime-dir",
  'mount-refused': "mount the project with --resolver-uid or --resolver-group for the daemon's user",
  'not-running': 'start one with `secretfs resolver --listen SOCKET`, or pass the right socket (option `socket` or SECRETFS_RESOLVER)',
  'connection-refused': 'the resolver daemon is gone; start it again',
  'permission-denied': 'the daemon allows only its owner by default; start it with --allow-uid or --allow-group',
  'untrusted-server': 'a secretfs socket must be served by root, by you, or by the owner of its directory; check who created it',
};

/** Control characters of a server's text, made visible (as the Swift client does). */
function printable(s) {
  return s.replace(/[\u0000-\u001f\u007f-\u009f]/g, (c) => `\\u{${c.codePointAt(0).toString(16)}}`);
}

/** One problem as `CONTEXT LINE:COLUMN: MESSAGE`. */
function describeProblem(p) {
  // Escaped as the daemon's own messages are: the text came over a socket.
  const context = printable(p.context), message = printable(p.message);
  return context ? `${context} ${p.line}:${p.column}: ${message}` : `${p.line}:${p.column}: ${message}`;
}

class SecretfsError extends Error {
  /**
   * @param {string} codeName a key of `codes`
   * @param {string} message
   * @param {{hint?: string, problems?: import('./wire').Problem[], socketPath?: string, errno?: string}} [extra]
   */
  constructor(codeName, message, extra = {}) {
    super(message);
    this.name = 'SecretfsError';
    /** @type {number} */
    this.code = codes[codeName];
    /** @type {string} */
    this.codeName = codeName;
    /** @type {string|undefined} */
    this.hint = extra.hint !== undefined ? extra.hint : hints[codeName];
    /** @type {import('./wire').Problem[]} every problem, in document order (for `problems`) */
    this.problems = extra.problems || [];
    /** @type {string|undefined} */
    this.socketPath = extra.socketPath;
    /** @type {string|undefined} the system error (for connect failures) */
    this.errno = extra.errno;
  }

  /** An ERROR frame's code and message. */
  static fromServer(code, text, socketPath) {
    const name = names[code];
    if (name === undefined || code >= 100) {
      return new SecretfsError('malformed-reply', `${socketPath}: server error ${code}: ${printable(text)}`, { socketPath });
    }
    return new SecretfsError(name, `resolver daemon: ${printable(text)} (${name})`, { socketPath });
  }

  /** A PROBLEMS reply: every problem with its location, one per line. */
  static fromProblems(problems, socketPath) {
    const lines = problems.map(describeProblem).join('\n');
    return new SecretfsError('problems', `the document cannot be resolved:\n${lines}`, { problems, socketPath });
  }

  /** Why connecting to `path` failed. @param {NodeJS.ErrnoException} e */
  static fromConnect(e, path) {
    const extra = { socketPath: path, errno: e.code };
    switch (e.code) {
      case 'ENOENT': case 'ENOTDIR':
        return new SecretfsError('not-running', `no resolver daemon listens on ${path}`, extra);
      case 'ECONNREFUSED':
        return new SecretfsError('connection-refused', `nothing answers on ${path} (stale socket)`, extra);
      case 'EACCES': case 'EPERM':
        return new SecretfsError('permission-denied', `permission denied connecting to ${path}`, extra);
      case 'ENAMETOOLONG':
        return new SecretfsError('path-too-long', `socket path too long (at most 107 bytes): ${path}`, extra);
      case 'EPIPE': case 'ECONNRESET':
        return new SecretfsError('connection-closed', `${path}: connection closed by the resolver daemon`, extra);
      default:
        return new SecretfsError('system', `cannot connect to ${path}: ${e.code || e.message}`, extra);
    }
  }

  /** Whether a fresh connection may succeed where this one failed. */
  get isConnectionLoss() {
    return this.codeName === 'connection-closed' || this.codeName === 'timeout';
  }

  /** The message, and the hint on a second line. */
  toString() {
    return this.hint ? `${this.name}: ${this.message}\nhint: ${this.hint}` : `${this.name}: ${this.message}`;
  }
}

module.exports = { SecretfsError, codes, names, closing, printable, describeProblem };
