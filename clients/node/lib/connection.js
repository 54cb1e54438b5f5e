'use strict';
// One connection to the resolver daemon: connecting, checking who serves the
// socket, framing, and a queue of requests answered in order.

const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');
const wire = require('./wire');
const { SecretfsError, closing } = require('./errors');

/** Longest path a Unix socket address holds (sun_path less its NUL). */
const MAX_PATH = 107;

/**
 * `dir` with every symbolic link on the way resolved, one component at a
 * time, each link (the ones its targets lead through too) owned by root or
 * by us; throws `untrusted(...)` at one that is not.
 * @param {string} dir an absolute path
 * @param {Set<number>} me
 * @param {(what: string) => Error} untrusted
 * @returns {string}
 */
function resolveTrustingLinks(dir, me, untrusted) {
  let pending = dir.split('/').filter((c) => c.length > 0);
  let resolved = '/';
  for (let hops = 0; pending.length > 0;) {
    const component = pending.shift();
    if (component === '.') continue;
    if (component === '..') { resolved = path.dirname(resolved); continue; }
    const next = path.join(resolved, component);
    const st = fs.lstatSync(next);
    if (!st.isSymbolicLink()) { resolved = next; continue; }
    if (!me.has(st.uid)) throw untrusted(`the path goes through ${next}, a symbolic link of uid ${st.uid}`);
    if (++hops > 40) throw untrusted(`the path goes through more than 40 symbolic links at ${next}`);
    const target = fs.readlinkSync(next);
    pending = target.split('/').filter((c) => c.length > 0).concat(pending);
    if (target.startsWith('/')) resolved = '/';
  }
  return resolved;
}

/**
 * Checks who could have made the socket at `socketPath`, before connecting.
 *
 * The Swift client asks the kernel who serves the socket (SO_PEERCRED) and
 * trusts root, itself and the owner of the socket's directory. Node has no
 * SO_PEERCRED, so this checks the same people through the file system: the
 * socket file (made by whoever bound it) must be owned by one of them, and
 * its directory and every directory above it must be owned by one of them and
 * not writable by group or others unless sticky (so nobody else can put a
 * socket of their own in its place between this check and connect).
 * A symbolic link on the way must be root's or ours: through another
 * user's link, "the owner of the socket's directory" would be whoever owns
 * the directory it points to, and they could point it elsewhere meanwhile.
 * Returns the socket's path with its directory resolved (what to connect
 * to, so a link changed afterwards does not matter) and its lstat,
 * compared again after connecting.
 * @param {string} socketPath
 * @returns {{real: string, st: fs.Stats}}
 */
function checkTrust(socketPath) {
  const me = new Set([0, process.geteuid(), process.getuid()]);
  const untrusted = (what) => new SecretfsError('untrusted-server', `${socketPath}: ${what}, which this client does not trust`,
    { socketPath });
  const dir = resolveTrustingLinks(path.dirname(path.resolve(socketPath)), me, untrusted);
  const real = path.join(dir, path.basename(socketPath));
  const dirOwner = fs.lstatSync(dir).uid;
  const trusted = new Set([...me, dirOwner]);
  for (let d = dir; ; d = path.dirname(d)) {
    const st = fs.lstatSync(d);
    if (!trusted.has(st.uid)) throw untrusted(`the directory ${d} is owned by uid ${st.uid}`);
    if ((st.mode & 0o022) !== 0 && (st.mode & 0o1000) === 0) {
      throw untrusted(`the directory ${d} is writable by other users (mode ${(st.mode & 0o7777).toString(8)})`);
    }
    if (d === path.dirname(d)) break;
  }
  const st = fs.lstatSync(real);
  if (!st.isSocket()) {
    throw new SecretfsError('not-running', `${socketPath} is not a socket`, { socketPath });
  }
  if (!trusted.has(st.uid)) throw untrusted(`it is served by uid ${st.uid}`);
  return { real, st };
}

/**
 * @typedef {object} Pending
 * @property {number[]} expect reply types that answer it
 * @property {(frame: Buffer) => void} resolve
 * @property {(e: SecretfsError) => void} reject
 * @property {NodeJS.Timeout|null} timer
 */

class Connection {
  /**
   * Connects and checks the server. Use `Connection.open`.
   * @param {string} socketPath
   * @param {net.Socket} socket
   * @param {Buffer} readBuffer
   * @param {number} timeout milliseconds per reply
   */
  constructor(socketPath, socket, readBuffer, timeout) {
    this.socketPath = socketPath;
    this.socket = socket;
    this.readBuffer = readBuffer;
    this.timeout = timeout;
    this.splitter = new wire.FrameSplitter();
    /** @type {Pending[]} */
    this.pending = [];
    /** Set once the connection cannot take requests (closed, or the daemon said it closes). */
    this.dead = false;
    /** Why it died, for requests sent after that. @type {SecretfsError|null} */
    this.failure = null;
    /** Frames nobody asked for (a watch's events); null: they end the connection. */
    this.onUnsolicited = null;
    /** Called once when the connection ends. @type {((e: SecretfsError) => void)|null} */
    this.onClose = null;
    /** Whether an idle connection keeps the process alive. */
    this.keepsAlive = false;
    /** Bytes read so far. */
    this.bytesReceived = 0;
    /** Called on the first bytes read or the end, whichever comes first. @type {(() => void)|null} */
    this.onFirstInput = null;
    socket.on('error', (e) => this.fail(SecretfsError.fromConnect(e, socketPath)));
    socket.on('end', () => this.fail(this.closedByDaemon()));
    socket.on('close', () => this.fail(this.closedByDaemon()));
    this.updateRef();
  }

  /**
   * Connects to the daemon at `socketPath` (after `checkTrust`), within
   * `timeout` milliseconds. With `listenFirst`, waits up to that many
   * milliseconds for the daemon to speak first (a refusal) before resolving.
   * @param {string} socketPath
   * @param {{timeout?: number, listenFirst?: number}} [options]
   * @returns {Promise<Connection>}
   */
  static open(socketPath, { timeout = 30000, listenFirst = 0 } = {}) {
    return new Promise((resolve, reject) => {
      if (Buffer.byteLength(socketPath) > MAX_PATH) {
        reject(SecretfsError.fromConnect({ code: 'ENAMETOOLONG' }, socketPath));
        return;
      }
      let before, real;
      try {
        ({ real, st: before } = checkTrust(socketPath));
      } catch (e) {
        reject(e instanceof SecretfsError ? e : SecretfsError.fromConnect(e, socketPath));
        return;
      }
      // Every byte read lands in this one buffer, copied out into frames and
      // zeroed when the connection closes.
      const readBuffer = Buffer.alloc(64 << 10);
      let conn = null;
      const socket = net.createConnection({
        path: real,
        onread: { buffer: readBuffer, callback: (n, buf) => { if (conn) conn.received(buf.subarray(0, n)); } },
      });
      const timer = setTimeout(() => {
        socket.destroy();
        readBuffer.fill(0);
        reject(new SecretfsError('timed-out', `${socketPath}: the resolver daemon did not accept the connection in time`,
          { socketPath, hint: 'it may be overloaded; retry shortly' }));
      }, timeout);
      const onError = (e) => {
        clearTimeout(timer);
        readBuffer.fill(0);
        reject(SecretfsError.fromConnect(e, socketPath));
      };
      socket.once('error', onError);
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.removeListener('error', onError);
        conn = new Connection(socketPath, socket, readBuffer, timeout);
        // The file connected to must be the one checked.
        let after = null;
        try { after = fs.lstatSync(real); } catch (_) { /* gone: refused below */ }
        if (!after || after.ino !== before.ino || after.dev !== before.dev) {
          conn.close();
          reject(new SecretfsError('untrusted-server', `${socketPath} was replaced while connecting`, { socketPath }));
          return;
        }
        if (listenFirst <= 0 || conn.bytesReceived > 0 || conn.dead) {
          resolve(conn);
          return;
        }
        const quiet = setTimeout(() => { conn.onFirstInput = null; resolve(conn); }, listenFirst);
        conn.onFirstInput = () => { clearTimeout(quiet); resolve(conn); };
      });
    });
  }

  closedByDaemon() {
    return new SecretfsError('connection-closed', `${this.socketPath}: connection closed by the resolver daemon`,
      { socketPath: this.socketPath, hint: 'the daemon may have stopped, or closed an idle connection' });
  }

  /** Refs the socket while a reply is awaited (or always, with keepsAlive). */
  updateRef() {
    if (this.dead) return;
    if (this.keepsAlive || this.pending.length > 0) this.socket.ref();
    else this.socket.unref();
  }

  /**
   * Sends `frame` and resolves with the reply, of a type in `expect`. An
   * ERROR reply rejects with its code; so does a PROBLEMS reply when not expected.
   * @param {Buffer} frame zeroed once written when `wipe` is set
   * @param {number[]} expect
   * @param {{wipe?: boolean}} [options]
   * @returns {Promise<Buffer>} the whole reply frame (the caller zeroes it)
   */
  request(frame, expect, { wipe = false } = {}) {
    return new Promise((resolve, reject) => {
      if (this.dead) {
        if (wipe) frame.fill(0);
        reject(this.failure || this.closedByDaemon());
        return;
      }
      /** @type {Pending} */
      const p = { expect, resolve, reject, timer: null };
      p.timer = setTimeout(() => {
        this.fail(new SecretfsError('timed-out', `${this.socketPath}: no reply from the resolver daemon within ${this.timeout / 1000} s`,
          { socketPath: this.socketPath }));
      }, this.timeout);
      p.timer.unref();
      this.pending.push(p);
      this.updateRef();
      this.socket.write(frame, () => { if (wipe) frame.fill(0); });
    });
  }

  /**
   * Whether `e`, the failure of the first request on this connection, may
   * hide the daemon's ERROR: the daemon refuses a peer (not-allowed, busy)
   * by sending an ERROR and closing at once, and when the request is written
   * after that close, Node reports the write's EPIPE and drops the unread
   * ERROR. Open again with `listenFirst` to read it.
   * @param {unknown} e
   */
  mayHideRefusal(e) {
    return e instanceof SecretfsError && e.codeName === 'connection-closed' && this.bytesReceived === 0
      && (e.errno === 'EPIPE' || e.errno === 'ECONNRESET');
  }

  /** Bytes from the socket (in the shared read buffer: copied, then zeroed). */
  received(bytes) {
    this.bytesReceived += bytes.length;
    if (this.onFirstInput) { const f = this.onFirstInput; this.onFirstInput = null; setImmediate(f); }
    let frames;
    try {
      frames = this.splitter.push(bytes);
    } catch (e) {
      bytes.fill(0);
      this.fail(new SecretfsError('malformed-reply', `${this.socketPath}: ${e.message}`, { socketPath: this.socketPath }));
      return;
    }
    bytes.fill(0);
    for (const f of frames) {
      if (this.dead) { f.fill(0); continue; }
      this.dispatch(f);
    }
  }

  dispatch(frame) {
    if (frame[4] !== wire.VERSION) {
      frame.fill(0);
      this.fail(this.malformed(`reply in protocol version ${frame[4]} (this client speaks ${wire.VERSION})`));
      return;
    }
    const type = frame[5];
    const p = this.pending.shift();
    if (p === undefined) {
      if (this.onUnsolicited && type !== wire.Type.ERROR) {
        this.onUnsolicited(frame);
        return;
      }
      // The daemon speaking unasked: an ERROR before it closes (an idle
      // timeout), or nonsense. Either way this connection is done.
      const e = type === wire.Type.ERROR ? this.errorOf(frame) : this.malformed(`unexpected message 0x${type.toString(16)}`);
      frame.fill(0);
      this.fail(e);
      return;
    }
    clearTimeout(p.timer);
    this.updateRef();
    if (type === wire.Type.ERROR) {
      const e = this.errorOf(frame);
      frame.fill(0);
      if (closing.has(e.code)) {
        this.fail(e, p);   // the daemon closes after these
      }
      p.reject(e);
      return;
    }
    if (!p.expect.includes(type)) {
      frame.fill(0);
      const e = this.malformed(`unexpected message 0x${type.toString(16)}`);
      this.fail(e, p);
      p.reject(e);
      return;
    }
    p.resolve(frame);
  }

  errorOf(frame) {
    try {
      const { code, message } = wire.parseError(frame);
      return SecretfsError.fromServer(code, message, this.socketPath);
    } catch (_) {
      return this.malformed('malformed ERROR frame');
    }
  }

  malformed(what) {
    return new SecretfsError('malformed-reply', `${this.socketPath}: ${what}`, {
      socketPath: this.socketPath,
      hint: `is ${this.socketPath} a resolver daemon's socket (not a mount's)? Are both the same secretfs version?`,
    });
  }

  /**
   * Ends the connection: every request still waiting (but `except`) is
   * rejected with `e`, buffers are zeroed.
   * @param {SecretfsError} e
   * @param {Pending} [except]
   */
  fail(e, except) {
    if (this.dead) return;
    this.dead = true;
    this.failure = e;
    const waiting = this.pending;
    this.pending = [];
    this.socket.destroy();
    this.splitter.wipe();
    this.readBuffer.fill(0);
    for (const p of waiting) {
      clearTimeout(p.timer);
      if (p !== except) p.reject(e);
    }
    const onClose = this.onClose;
    this.onClose = null;
    if (onClose) onClose(e);
    const first = this.onFirstInput;
    this.onFirstInput = null;
    if (first) first();
  }

  /** Closes the connection (requests waiting are rejected). */
  close() {
    this.fail(new SecretfsError('connection-closed', `${this.socketPath}: the client was closed`, { socketPath: this.socketPath }));
  }
}

/**
 * Opens a connection of its own and sends its first request (WATCH, REDACT),
 * reading a refusal that the first write may have hidden (`mayHideRefusal`).
 * @param {string} socketPath
 * @param {number} timeout
 * @param {(conn: Connection) => void} prepare called before the request is sent
 * @param {() => Buffer} build
 * @param {number[]} expect
 * @returns {Promise<{conn: Connection, frame: Buffer}>}
 */
async function openWithRequest(socketPath, timeout, prepare, build, expect) {
  for (let attempt = 0; ; attempt++) {
    const conn = await Connection.open(socketPath, { timeout, listenFirst: attempt === 0 ? 0 : LISTEN_FIRST });
    prepare(conn);
    try {
      return { conn, frame: await conn.request(build(), expect) };
    } catch (e) {
      conn.close();
      if (attempt === 0 && conn.mayHideRefusal(e)) continue;
      throw e;
    }
  }
}

/** How long a second connection waits for a refusal before sending (ms). */
const LISTEN_FIRST = 200;

module.exports = { Connection, checkTrust, openWithRequest, MAX_PATH, LISTEN_FIRST };
