'use strict';
// WATCH: a project's changes, on a connection of its own, that reconnects
// with backoff when it fails, as the Swift ChangeFeed does.

const { EventEmitter } = require('node:events');
const wire = require('./wire');
const { openWithRequest } = require('./connection');

/** Backoff between reconnection attempts (ms): doubles from the first to the last. */
const BACKOFF = Object.freeze({ first: 50, last: 2000 });

/**
 * A project's change feed.
 *
 * Events:
 * - `'change'` `{names: string[], complete: boolean}`: names created,
 *   updated, renamed or deleted; `complete` false means "treat every value as
 *   changed" (the mount dropped names, went away or came back).
 * - `'lost'` `(error: SecretfsError)`: the feed is down; no change is seen
 *   until `'restored'`. It reconnects by itself.
 * - `'restored'` `{mountWatched: boolean}`: subscribed again. Changes made
 *   while it was down were not seen: re-fetch everything derived from values.
 * - `'close'`: after `close()`.
 *
 * A Watch never emits `'error'`: after the first subscription (which
 * `client.watch()` reports by rejecting), every failure is `'lost'`.
 */
class Watch extends EventEmitter {
  /**
   * @param {import('./client').Client} client
   * @param {string} project
   */
  constructor(client, project) {
    super();
    this.socketPath = client.socketPath;
    this.timeout = client.timeout;
    this.project = project;
    /** Whether the daemon was watching the mount when it last acknowledged. */
    this.mountWatched = false;
    /** Whether the feed is up now. */
    this.live = false;
    this.closed = false;
    this.keepsAlive = true;
    /** @type {Connection|null} */
    this.conn = null;
    /** @type {NodeJS.Timeout|null} */
    this.timer = null;
    this.delay = BACKOFF.first;
  }

  /** The first subscription: rejects (and closes the watch) if it fails. */
  async start() {
    try {
      this.deliver(await this.subscribe());
    } catch (e) {
      this.close();
      throw e;
    }
  }

  /**
   * Connects and sends WATCH. What arrives after WATCHING (events, the end)
   * is held until `deliver`: a CHANGED can come in the same read as
   * WATCHING, before the caller of `client.watch()` has its listeners on.
   * @returns {Promise<{conn: import('./connection').Connection, ready: boolean, frames: Buffer[], end: import('./errors').SecretfsError|null, scheduled: boolean}|null>}
   */
  async subscribe() {
    let sub = null;
    const { conn, frame } = await openWithRequest(this.socketPath, this.timeout, (c) => {
      c.keepsAlive = this.keepsAlive;
      const s = { conn: c, ready: false, frames: [], end: null, scheduled: false };
      c.onUnsolicited = (f) => { s.frames.push(f); this.schedule(s); };
      c.onClose = (e) => { s.end = e; this.schedule(s); };
      sub = s;
    }, () => wire.projectRequest(wire.Type.WATCH, this.project), [wire.Type.WATCHING]);
    try {
      const r = new wire.Reader(frame);
      this.mountWatched = r.u8() === 1;
      r.end();
    } catch (e) {
      const m = conn.malformed(`WATCHING reply: ${e.message}`);
      conn.close();
      throw m;
    } finally {
      frame.fill(0);
    }
    if (this.closed) { conn.close(); return null; }
    this.conn = conn;
    this.live = true;
    return sub;
  }

  /** Starts delivering what `sub` holds and receives. */
  deliver(sub) {
    if (!sub) return;
    sub.ready = true;
    this.schedule(sub);
  }

  schedule(sub) {
    if (!sub.ready || sub.scheduled) return;
    sub.scheduled = true;
    setImmediate(() => {
      sub.scheduled = false;
      while (sub.frames.length > 0 && !this.closed) this.event(sub.conn, sub.frames.shift());
      if (sub.end && sub.conn === this.conn) this.lost(sub.end);
    });
  }

  event(conn, frame) {
    if (frame[5] !== wire.Type.CHANGED) {
      frame.fill(0);
      conn.fail(conn.malformed(`unexpected message 0x${frame[5].toString(16)} on a watch`));
      return;
    }
    let change;
    try {
      const r = new wire.Reader(frame);
      const flags = r.u8();
      const count = r.u32();
      const names = [];
      for (let i = 0; i < count; i++) names.push(r.name());
      r.end();
      change = { names, complete: (flags & 0x01) === 0 };
    } catch (e) {
      conn.fail(conn.malformed(`change event: ${e.message}`));
      return;
    }
    if (!this.closed) this.emit('change', change);
  }

  lost(e) {
    this.conn = null;
    this.live = false;
    if (this.closed) return;
    this.emit('lost', e);
    this.retry();
  }

  retry() {
    if (this.closed) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.subscribe().then((sub) => {
        if (!sub || this.closed) return;
        this.delay = BACKOFF.first;
        this.emit('restored', { mountWatched: this.mountWatched });
        this.deliver(sub);
      }, () => {
        this.delay = Math.min(this.delay * 2, BACKOFF.last);
        this.retry();
      });
    }, this.delay);
    if (!this.keepsAlive) this.timer.unref();
  }

  /** Lets the process exit while this watch is open (as `timer.unref()`). */
  unref() {
    this.keepsAlive = false;
    if (this.conn) { this.conn.keepsAlive = false; this.conn.updateRef(); }
    if (this.timer) this.timer.unref();
    return this;
  }

  /** Ends the watch; no event is emitted after this, but `'close'`. */
  close() {
    if (this.closed) return;
    this.closed = true;
    this.live = false;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    const c = this.conn;
    this.conn = null;
    if (c) c.close();
    this.emit('close');
  }
}

module.exports = { Watch, BACKOFF };
