'use strict';
// REDACT: a Transform stream that masks every value of a project, through
// the daemon, in lock-step: each DATA frame gets one REDACTED reply.

const { Transform } = require('node:stream');
const wire = require('./wire');
const { openWithRequest } = require('./connection');
const { SecretfsError } = require('./errors');

/**
 * @typedef {object} RedactOptions
 * @property {string} [mask] what replaces a value (1 to 256 bytes; default `[REDACTED]`)
 * @property {number} [minimumLength] values shorter than this are not masked (default 4; reported)
 * @property {number} [keepAlive] ms of quiet after which an empty DATA frame keeps the
 *   daemon from closing the stream as idle (default 30000; 0: never)
 */

/**
 * What is written is sent to the daemon in DATA frames (at most 64 KiB each);
 * what is read is the daemon's REDACTED output: every complete line as soon as
 * it is written (a value split across writes is still masked, so a partial
 * line may be held back until more comes or the stream ends).
 *
 * Events besides the Transform's: `'skipped'` `([{name, reason}])`, the
 * secrets the daemon does not mask (shorter than the minimum). When nothing
 * listens for it, the names (never values) go out as a process warning, so
 * an unmasked secret is never silent.
 *
 * The stream fails closed: if the daemon cannot be reached or the connection
 * breaks, the stream is destroyed with a SecretfsError and passes nothing on
 * unmasked. (A REDACT stream cannot be resumed on a new connection: the
 * daemon held back the tail of what was sent.)
 */
class RedactStream extends Transform {
  /**
   * @param {import('./client').Client} client
   * @param {string} project
   * @param {RedactOptions} [options]
   */
  constructor(client, project, { mask = '[REDACTED]', minimumLength = 4, keepAlive = 30000 } = {}) {
    super();
    const maskBytes = typeof mask === 'string' ? Buffer.byteLength(mask) : 0;
    if (maskBytes < 1 || maskBytes > wire.MAX_MASK) throw new TypeError(`the mask must be 1 to ${wire.MAX_MASK} bytes`);
    if (!Number.isInteger(minimumLength) || minimumLength < 1 || minimumLength > 0xffff) {
      throw new TypeError('minimumLength must be an integer from 1 to 65535');
    }
    this.project = project;
    this.socketPath = client.socketPath;
    this.keepAliveMs = keepAlive;
    /** Secrets not masked, with the reason (known once `ready` resolves). @type {{name: string, reason: string}[]} */
    this.skipped = [];
    /** @type {Connection|null} */
    this.conn = null;
    /** @type {NodeJS.Timeout|null} */
    this.pinger = null;
    // One operation at a time on the connection (lock-step).
    this.chain = Promise.resolve();
    /** Resolves with `skipped` once the daemon is redacting; rejects (and destroys the stream) if it cannot. */
    this.ready = this.open(client.timeout, mask, minimumLength);
    this.ready.catch((e) => this.destroy(e));
  }

  async open(timeout, mask, minimumLength) {
    const { conn, frame } = await openWithRequest(this.socketPath, timeout, () => {},
      () => wire.redactRequest(this.project, minimumLength, mask), [wire.Type.REDACTING]);
    if (this.destroyed) {
      frame.fill(0);
      conn.close();
      throw new SecretfsError('connection-closed', 'the stream was destroyed', { socketPath: this.socketPath });
    }
    this.conn = conn;
    conn.onClose = (e) => { if (this.conn === conn && !this.destroyed) this.destroy(e); };
    if (conn.dead) throw conn.failure;
    try {
      const r = new wire.Reader(frame);
      const n = r.u32();
      const skipped = [];
      for (let i = 0; i < n; i++) skipped.push({ name: r.text(), reason: r.text() });
      r.end();
      this.skipped = skipped;
    } catch (e) {
      const m = conn.malformed(`REDACTING reply: ${e.message}`);
      conn.fail(m);
      throw m;
    } finally {
      frame.fill(0);
    }
    if (this.skipped.length > 0) {
      if (this.listenerCount('skipped') > 0) {
        this.emit('skipped', this.skipped);
      } else {
        const list = this.skipped.map((s) => `${s.name} (${s.reason})`).join(', ');
        process.emitWarning(`secretfs: project ${this.project}: ${this.skipped.length} secret(s) not masked: ${list}`,
          { code: 'SECRETFS_NOT_MASKED' });
      }
    }
    this.armKeepAlive();
    return this.skipped;
  }

  /** Queues `op` after whatever the connection is doing. */
  serial(op) {
    const next = this.chain.then(op);
    this.chain = next.catch(() => {});
    return next;
  }

  /** Sends one DATA (or END) frame and pushes the reply's bytes. */
  async exchange(frame, expect) {
    if (!this.conn) {
      frame.fill(0);
      throw new SecretfsError('connection-closed', `${this.socketPath}: the redaction stream is closed`, { socketPath: this.socketPath });
    }
    const reply = await this.conn.request(frame, [expect], { wipe: true });
    if (reply.length > wire.HEADER) this.push(Buffer.from(reply.subarray(wire.HEADER)));
    reply.fill(0);
  }

  armKeepAlive() {
    if (this.pinger) clearTimeout(this.pinger);
    this.pinger = null;
    if (!this.keepAliveMs || this.destroyed || this.writableFinished) return;
    this.pinger = setTimeout(() => {
      this.pinger = null;
      this.serial(async () => {
        if (this.destroyed || this.writableEnded) return;
        await this.exchange(wire.dataRequest(Buffer.alloc(0)), wire.Type.REDACTED);
        this.armKeepAlive();
      }).catch((e) => this.destroy(e));
    }, this.keepAliveMs);
    this.pinger.unref();
  }

  _transform(chunk, _encoding, callback) {
    this.serial(async () => {
      await this.ready;
      for (let off = 0; off < chunk.length; off += wire.DATA_CHUNK) {
        await this.exchange(wire.dataRequest(chunk.subarray(off, off + wire.DATA_CHUNK)), wire.Type.REDACTED);
      }
      this.armKeepAlive();
    }).then(() => callback(), callback);
  }

  _flush(callback) {
    this.serial(async () => {
      await this.ready;
      if (this.pinger) clearTimeout(this.pinger);
      this.pinger = null;
      await this.exchange(wire.endRequest(), wire.Type.ENDED);
      const c = this.conn;
      this.conn = null;
      c.close();
    }).then(() => callback(), callback);
  }

  _destroy(err, callback) {
    if (this.pinger) clearTimeout(this.pinger);
    this.pinger = null;
    const c = this.conn;
    this.conn = null;
    if (c) c.close();
    callback(err);
  }
}

module.exports = { RedactStream };
