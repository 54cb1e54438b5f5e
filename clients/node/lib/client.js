'use strict';
// Requests to the resolver daemon: RESOLVE, VALUES, NAMES on one reused
// connection, WATCH and REDACT on connections of their own.

const wire = require('./wire');
const { Connection, LISTEN_FIRST } = require('./connection');
const { SecretfsError } = require('./errors');
const { Watch } = require('./watch');
const { RedactStream } = require('./redact');

/** Where the installed service (secretfs-resolver.service) listens. */
const SERVICE_SOCKET = '/run/secretfs-resolver/resolver.sock';

/**
 * The daemon's socket when none is given: `SECRETFS_RESOLVER`, else
 * `SECRETFS_RUNTIME_DIR/resolver.sock` when that variable is set (a daemon
 * beside a runtime directory of one's own), else the installed service's
 * socket, `/run/secretfs-resolver/resolver.sock`.
 * @returns {string}
 */
function defaultSocket() {
  if (process.env.SECRETFS_RESOLVER) return process.env.SECRETFS_RESOLVER;
  if (process.env.SECRETFS_RUNTIME_DIR) return `${process.env.SECRETFS_RUNTIME_DIR}/resolver.sock`;
  return SERVICE_SOCKET;
}

function checkProject(project) {
  if (!wire.isValidName(project)) {
    throw new SecretfsError('invalid-project', `${JSON.stringify(String(project).slice(0, 64))} is not a valid project name`);
  }
}

/** A document as bytes: a Buffer or Uint8Array as is, a string as UTF-8. */
function documentBytes(document) {
  if (typeof document === 'string') return Buffer.from(document, 'utf8');
  if (document instanceof Uint8Array) return document;
  throw new SecretfsError('invalid-argument', 'the document must be a string, a Buffer or a Uint8Array');
}

/**
 * @typedef {object} ClientOptions
 * @property {string} [socket] the daemon's socket (default: `defaultSocket()`)
 * @property {number} [timeout] milliseconds to wait for a connection or a reply (default 30000)
 */

class Client {
  /** @param {ClientOptions} [options] */
  constructor(options = {}) {
    /** @type {string} */
    this.socketPath = options.socket || defaultSocket();
    /** @type {number} */
    this.timeout = options.timeout || 30000;
    /** @type {Promise<Connection>|null} the reused request connection */
    this.connecting = null;
    this.closed = false;
    /** Watches and redaction streams, closed with the client. */
    this.children = new Set();
  }

  /** A live request connection: the current one, or a new one. */
  connection(listenFirst = 0) {
    if (this.connecting) return this.connecting;
    const c = Connection.open(this.socketPath, { timeout: this.timeout, listenFirst });
    this.connecting = c;
    c.then((conn) => {
      conn.onClose = () => { if (this.connecting === c) this.connecting = null; };
      if (conn.dead && this.connecting === c) this.connecting = null;
    }, () => { if (this.connecting === c) this.connecting = null; });
    return c;
  }

  /**
   * Sends a request built by `build` on the reused connection and returns the
   * reply frame. When the daemon has closed a connection that was reused
   * (idle timeout, restart), the request is sent again once, on a new one:
   * every request sent through here is idempotent.
   * @param {() => Buffer} build
   * @param {number[]} expect
   * @returns {Promise<Buffer>}
   */
  async request(build, expect) {
    let listenFirst = 0;
    for (let attempt = 0; ; attempt++) {
      if (this.closed) throw new SecretfsError('connection-closed', `${this.socketPath}: the client was closed`, { socketPath: this.socketPath });
      const reused = this.connecting !== null;
      const conn = await this.connection(listenFirst);
      try {
        return await conn.request(build(), expect);
      } catch (e) {
        if (attempt === 0 && conn.mayHideRefusal(e)) {
          listenFirst = LISTEN_FIRST;   // the daemon may have refused us: read why
          continue;
        }
        if (attempt === 0 && reused && e instanceof SecretfsError && e.isConnectionLoss) continue;
        throw e;
      }
    }
  }

  /**
   * Resolves a document through the daemon: the same bytes as
   * `secretfs resolve`. Rejects with a SecretfsError `problems` (with every
   * problem and its location) when the document cannot be resolved.
   * @param {string} project
   * @param {string|Uint8Array} document
   * @param {{format?: 'flow'|'config'|'expr', output?: 'document'|'bindings'}} [options]
   * @returns {Promise<Buffer>} holds values: zero it (`buf.fill(0)`) when done
   */
  async resolve(project, document, { format = 'flow', output = 'document' } = {}) {
    checkProject(project);
    // Own properties only: 'toString' is not a format.
    const f = Object.hasOwn(wire.Format, format) ? wire.Format[format] : undefined;
    const o = Object.hasOwn(wire.Output, output) ? wire.Output[output] : undefined;
    if (f === undefined) throw new SecretfsError('invalid-argument', `format must be 'flow', 'config' or 'expr', not ${JSON.stringify(String(format).slice(0, 64))}`);
    if (o === undefined) throw new SecretfsError('invalid-argument', `output must be 'document' or 'bindings', not ${JSON.stringify(String(output).slice(0, 64))}`);
    const bytes = documentBytes(document);
    if (bytes.length + 64 > wire.MAX_REQUEST_FRAME) {
      throw new SecretfsError('frame-too-large', `the document (${bytes.length} bytes) is over the daemon's request limit`);
    }
    const frame = await this.request(() => wire.resolveRequest(project, f, o, bytes), [wire.Type.RESOLVED, wire.Type.PROBLEMS]);
    try {
      const r = new wire.Reader(frame);
      if (frame[5] === wire.Type.PROBLEMS) {
        throw SecretfsError.fromProblems(wire.parseProblems(frame), this.socketPath);
      }
      const out = r.value();
      r.end();
      return out;
    } catch (e) {
      if (e instanceof wire.ParseError) throw this.malformed(frame[5] === wire.Type.PROBLEMS ? 'PROBLEMS' : 'RESOLVED', e);
      throw e;
    } finally {
      frame.fill(0);
    }
  }

  /** A flow definition (YAML) with its `!expr` references rewritten. @returns {Promise<Buffer>} */
  resolveFlow(project, yaml) { return this.resolve(project, yaml, { format: 'flow' }); }

  /** An installation config (JSON: field -> expression source) rewritten. @returns {Promise<Buffer>} */
  resolveConfig(project, json) { return this.resolve(project, json, { format: 'config' }); }

  /** One expression rewritten. @returns {Promise<Buffer>} */
  resolveExpression(project, source) { return this.resolve(project, source, { format: 'expr' }); }

  /**
   * The values a document references, as an object `{NAME: value}` (parsed
   * from the daemon's bindings JSON; the reply's bytes are zeroed after
   * parsing, but the strings live in the JS heap, which cannot be wiped).
   * @param {string} project
   * @param {string|Uint8Array} document
   * @param {{format?: 'flow'|'config'|'expr'}} [options]
   * @returns {Promise<Record<string, string>>}
   */
  async bindings(project, document, { format = 'flow' } = {}) {
    const raw = await this.resolve(project, document, { format, output: 'bindings' });
    try {
      return JSON.parse(raw.toString('utf8'));
    } catch (_) {
      // Never quote the text: it holds values.
      throw new SecretfsError('malformed-reply', `${this.socketPath}: the bindings are not a JSON object`, { socketPath: this.socketPath });
    } finally {
      raw.fill(0);
    }
  }

  /**
   * The values of `names` (only those are fetched), each in a Buffer of its
   * own: zero them (`buf.fill(0)`) when done.
   * @param {string} project
   * @param {string[]} names
   * @returns {Promise<{values: Map<string, Buffer>, missing: string[]}>}
   */
  async values(project, names) {
    checkProject(project);
    // A string is iterable too: values('demo', 'API_TOKEN') would ask for A, P, I, ...
    if (!Array.isArray(names)) throw new SecretfsError('invalid-argument', 'names must be an array of secret names');
    const unique = [...new Set(names)];
    for (const n of unique) {
      if (!wire.isValidName(n)) throw new SecretfsError('invalid-name', `${JSON.stringify(String(n).slice(0, 64))} is not a valid secret name`);
    }
    const values = new Map();
    const missing = [];
    try {
      for (let i = 0; i < unique.length; i += wire.MAX_NAMES) {
        const batch = unique.slice(i, i + wire.MAX_NAMES);
        const frame = await this.request(() => wire.valuesRequest(project, batch), [wire.Type.VALUES_REPLY]);
        try {
          const asked = new Set(batch);
          const r = new wire.Reader(frame);
          const found = r.u32();
          for (let k = 0; k < found; k++) {
            const name = r.text();
            if (!asked.has(name)) throw new wire.ParseError('a value for a name that was not asked for');
            const v = r.value();
            if (values.has(name)) values.get(name).fill(0);
            values.set(name, v);
          }
          const m = r.u32();
          for (let k = 0; k < m; k++) {
            const name = r.text();
            if (!asked.has(name)) throw new wire.ParseError('a missing name that was not asked for');
            missing.push(name);
          }
          r.end();
        } catch (e) {
          if (e instanceof wire.ParseError) throw this.malformed('VALUES', e);
          throw e;
        } finally {
          frame.fill(0);
        }
      }
    } catch (e) {
      for (const v of values.values()) v.fill(0);
      throw e;
    }
    return { values, missing };
  }

  /**
   * Every secret name of the project.
   * @param {string} project
   * @returns {Promise<string[]>}
   */
  async names(project) {
    checkProject(project);
    const frame = await this.request(() => wire.projectRequest(wire.Type.NAMES, project), [wire.Type.NAMES_REPLY]);
    try {
      const r = new wire.Reader(frame);
      const count = r.u32();
      if (count > wire.MAX_LISTED_NAMES) throw new wire.ParseError(`NAMES announces ${count} names (at most ${wire.MAX_LISTED_NAMES})`);
      const names = [];
      for (let i = 0; i < count; i++) names.push(r.name());
      r.end();
      return names;
    } catch (e) {
      if (e instanceof wire.ParseError) throw this.malformed('NAMES', e);
      throw e;
    } finally {
      frame.fill(0);
    }
  }

  /**
   * Watches the project's changes on a connection of its own. Resolves once
   * the daemon is watching (rejects if the first subscription fails); then
   * the Watch emits 'change', 'lost' and 'restored' until `close()`.
   * @param {string} project
   * @returns {Promise<Watch>}
   */
  async watch(project) {
    checkProject(project);
    const w = new Watch(this, project);
    this.children.add(w);
    w.once('close', () => this.children.delete(w));
    await w.start();
    return w;
  }

  /**
   * A redaction stream (a Transform): every value of the project, in all its
   * encodings, is masked in what passes through.
   * @param {string} project
   * @param {{mask?: string, minimumLength?: number, keepAlive?: number}} [options]
   * @returns {RedactStream}
   */
  redact(project, options = {}) {
    checkProject(project);
    const s = new RedactStream(this, project, options);
    this.children.add(s);
    s.once('close', () => this.children.delete(s));
    return s;
  }

  malformed(what, e) {
    return new SecretfsError('malformed-reply', `${this.socketPath}: ${what} reply: ${e.message}`, { socketPath: this.socketPath });
  }

  /** Closes the request connection, every watch and every redaction stream. */
  close() {
    this.closed = true;
    const c = this.connecting;
    this.connecting = null;
    if (c) c.then((conn) => conn.close(), () => {});
    for (const child of [...this.children]) {
      if (child instanceof Watch) child.close();
      else child.destroy();
    }
  }
}

module.exports = { Client, defaultSocket, checkProject };
