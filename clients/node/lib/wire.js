'use strict';
// The resolver daemon's wire format (docs/protocol.md, "Resolver daemon
// protocol"), built and parsed with Buffer:
//
//     frame = length:u32be  version:u8 (1)  type:u8  body
//
// `length` counts version + type + body. Integers are big-endian; `text` is a
// u16 byte length then UTF-8; `value` is a u32 byte length then raw bytes.

const VERSION = 1;
/** Bytes before the body: length (4), version (1), type (1). */
const HEADER = 6;
/** Largest reply frame this client accepts (after the length prefix). */
const MAX_REPLY_FRAME = 64 << 20;
/** Largest request frame the daemon accepts (a document or a DATA chunk). */
const MAX_REQUEST_FRAME = 16 << 20;
/** Largest DATA body a redaction stream sends. */
const DATA_CHUNK = 64 << 10;
/** Names per VALUES request. */
const MAX_NAMES = 4096;
// What a reply may announce, whatever its frame could hold: a 64 MiB frame
// of 3-byte names is 22M strings (700 MB of heap) in this process. The
// daemon never sends near these (its documents stop at 100,000 references
// and 1,000 problems; a project's names fit the mount's 17 MiB frame).
const MAX_LISTED_NAMES = 1_000_000;
const MAX_PROBLEMS = 200_000;
/** Longest REDACT mask, in bytes. */
const MAX_MASK = 256;

/** Message types (requests have the high bit clear, replies set). */
const Type = Object.freeze({
  RESOLVE: 0x11,
  VALUES: 0x12,
  NAMES: 0x13,
  WATCH: 0x14,
  REDACT: 0x15,
  DATA: 0x16,
  END: 0x17,
  RESOLVED: 0x91,
  PROBLEMS: 0x92,
  VALUES_REPLY: 0x93,
  NAMES_REPLY: 0x94,
  WATCHING: 0x95,
  CHANGED: 0x96,
  REDACTING: 0x97,
  REDACTED: 0x98,
  ENDED: 0x99,
  ERROR: 0xff,
});

/** RESOLVE's format and output codes. */
const Format = Object.freeze({ flow: 1, config: 2, expr: 3 });
const Output = Object.freeze({ document: 1, bindings: 2 });

const NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * Whether `s` is a valid secret or project name: `[A-Za-z_][A-Za-z0-9_]*`,
 * 1 to 255 bytes (ASCII, so bytes and characters agree).
 * @param {unknown} s
 * @returns {boolean}
 */
function isValidName(s) {
  return typeof s === 'string' && s.length >= 1 && s.length <= 255 && NAME.test(s);
}

/** A reply that does not parse: thrown by `Reader`, turned into `malformed-reply`. */
class ParseError extends Error {}

/** Builds one frame: the header is written by `finish()`. */
class Builder {
  /**
   * @param {number} type
   * @param {number} bodySize exact size of the body
   */
  constructor(type, bodySize) {
    // Buffer.alloc never uses the shared pool: the frame owns its memory, so
    // zeroing it zeroes every copy this client made.
    this.buf = Buffer.alloc(HEADER + bodySize);
    this.buf.writeUInt32BE(2 + bodySize, 0);
    this.buf[4] = VERSION;
    this.buf[5] = type;
    this.off = HEADER;
  }
  u8(v) { this.buf[this.off++] = v; return this; }
  u16(v) { this.buf.writeUInt16BE(v, this.off); this.off += 2; return this; }
  u32(v) { this.buf.writeUInt32BE(v, this.off); this.off += 4; return this; }
  /** @param {string} s */
  text(s) {
    const n = this.buf.write(s, this.off + 2, 'utf8');
    this.buf.writeUInt16BE(n, this.off);
    this.off += 2 + n;
    return this;
  }
  /** @param {Uint8Array} b */
  bytes(b) { this.buf.set(b, this.off); this.off += b.length; return this; }
  /** @returns {Buffer} */
  finish() {
    if (this.off !== this.buf.length) throw new Error(`frame size mismatch: ${this.off} != ${this.buf.length}`);
    return this.buf;
  }
}

/** Size of a `text` field. @param {string} s */
function textSize(s) {
  const n = Buffer.byteLength(s, 'utf8');
  if (n > 0xffff) throw new RangeError('text field over 65535 bytes');
  return 2 + n;
}

/** Reads the body of one received frame, exactly. */
class Reader {
  /** @param {Buffer} frame the whole frame (length prefix included) */
  constructor(frame) {
    this.buf = frame;
    this.off = HEADER;
  }
  need(n) {
    if (this.buf.length - this.off < n) throw new ParseError('a field is truncated');
  }
  u8() { this.need(1); return this.buf[this.off++]; }
  u16() { this.need(2); const v = this.buf.readUInt16BE(this.off); this.off += 2; return v; }
  u32() { this.need(4); const v = this.buf.readUInt32BE(this.off); this.off += 4; return v; }
  /** @returns {string} */
  text() {
    const n = this.u16();
    this.need(n);
    const s = this.buf.toString('utf8', this.off, this.off + n);
    this.off += n;
    return s;
  }
  /** A text field that must be a valid name. */
  name() {
    const s = this.text();
    if (!isValidName(s)) throw new ParseError('an invalid name');
    return s;
  }
  /**
   * A `value`: a copy in a Buffer of its own (never a view into the frame,
   * which is zeroed after parsing).
   * @returns {Buffer}
   */
  value() {
    const n = this.u32();
    this.need(n);
    const v = Buffer.alloc(n);
    this.buf.copy(v, 0, this.off, this.off + n);
    this.off += n;
    return v;
  }
  /** The rest of the body, copied. @returns {Buffer} */
  rest() {
    const v = Buffer.alloc(this.buf.length - this.off);
    this.buf.copy(v, 0, this.off);
    this.off = this.buf.length;
    return v;
  }
  end() {
    if (this.off !== this.buf.length) throw new ParseError(`${this.buf.length - this.off} bytes left over`);
  }
}

/**
 * Splits a byte stream into frames. Input is copied into frame buffers this
 * object allocates (so they can be zeroed), never kept by reference.
 */
class FrameSplitter {
  /** @param {number} [maxFrame] largest `length` accepted */
  constructor(maxFrame = MAX_REPLY_FRAME) {
    this.maxFrame = maxFrame;
    this.head = Buffer.alloc(4);
    this.headFill = 0;
    /** @type {Buffer|null} */
    this.frame = null;
    this.fill = 0;
  }

  /**
   * Feeds bytes; returns the complete frames (whole, length prefix included).
   * Throws ParseError for a length outside 2...maxFrame (the stream cannot be
   * resynchronised after that).
   * @param {Uint8Array} chunk
   * @returns {Buffer[]}
   */
  push(chunk) {
    const out = [];
    let i = 0;
    while (i < chunk.length) {
      if (this.frame === null) {
        const take = Math.min(4 - this.headFill, chunk.length - i);
        this.head.set(chunk.subarray(i, i + take), this.headFill);
        this.headFill += take;
        i += take;
        if (this.headFill < 4) break;
        const length = this.head.readUInt32BE(0);
        this.headFill = 0;
        if (length < 2 || length > this.maxFrame) {
          throw new ParseError(`reply length ${length} is outside the protocol's limits`);
        }
        this.frame = Buffer.alloc(4 + length);
        this.head.copy(this.frame, 0);
        this.fill = 4;
      }
      const take = Math.min(this.frame.length - this.fill, chunk.length - i);
      this.frame.set(chunk.subarray(i, i + take), this.fill);
      this.fill += take;
      i += take;
      if (this.fill === this.frame.length) {
        out.push(this.frame);
        this.frame = null;
        this.fill = 0;
      }
    }
    return out;
  }

  /** Whether a frame has started and not finished. */
  get partial() { return this.frame !== null || this.headFill > 0; }

  /** Zeroes a frame still being received. */
  wipe() {
    if (this.frame) this.frame.fill(0);
    this.frame = null;
    this.fill = 0;
    this.headFill = 0;
  }
}

// ---- Requests ----------------------------------------------------------------

/** NAMES or WATCH: `text project`. */
function projectRequest(type, project) {
  return new Builder(type, textSize(project)).text(project).finish();
}

/**
 * RESOLVE: `text project, u8 format, u8 output, u32 n, n bytes document`.
 * @param {string} project
 * @param {number} format
 * @param {number} output
 * @param {Uint8Array} document
 */
function resolveRequest(project, format, output, document) {
  return new Builder(Type.RESOLVE, textSize(project) + 1 + 1 + 4 + document.length)
    .text(project).u8(format).u8(output).u32(document.length).bytes(document).finish();
}

/** VALUES: `text project, u16 count, count × text name`. */
function valuesRequest(project, names) {
  let size = textSize(project) + 2;
  for (const n of names) size += textSize(n);
  const b = new Builder(Type.VALUES, size).text(project).u16(names.length);
  for (const n of names) b.text(n);
  return b.finish();
}

/** REDACT: `text project, u16 minimumLength, text mask`. */
function redactRequest(project, minimumLength, mask) {
  return new Builder(Type.REDACT, textSize(project) + 2 + textSize(mask))
    .text(project).u16(minimumLength).text(mask).finish();
}

/** DATA: the bytes to redact, the whole body. @param {Uint8Array} bytes */
function dataRequest(bytes) {
  return new Builder(Type.DATA, bytes.length).bytes(bytes).finish();
}

function endRequest() {
  return new Builder(Type.END, 0).finish();
}

// ---- Replies -----------------------------------------------------------------

/**
 * @typedef {object} Problem
 * @property {string} kind `syntax`, `notStatic`, `invalidName`, `assignment`,
 *   `missingSecret`, `invalidUTF8Value`, `document`, `limit`
 * @property {string} context flow path, `field "NAME"`, or ''
 * @property {number} line 1-based
 * @property {number} column 1-based, in Unicode code points
 * @property {string} message never a value
 * @property {string|null} secretName for `missingSecret` and `invalidUTF8Value`
 */

/** PROBLEMS body. @param {Buffer} frame @returns {Problem[]} */
function parseProblems(frame) {
  const r = new Reader(frame);
  const count = r.u32();
  if (count > MAX_PROBLEMS) throw new ParseError(`PROBLEMS announces ${count} problems (at most ${MAX_PROBLEMS})`);
  const problems = [];
  for (let i = 0; i < count; i++) {
    const kind = r.text();
    const context = r.text();
    const line = r.u32();
    const column = r.u32();
    const message = r.text();
    const hasName = r.u8();
    const secretName = hasName === 0 ? null : r.text();
    problems.push({ kind, context, line, column, message, secretName });
  }
  r.end();
  return problems;
}

/** ERROR body: `u16 code, text message`. */
function parseError(frame) {
  const r = new Reader(frame);
  const code = r.u16();
  const message = r.text();
  r.end();
  return { code, message };
}

module.exports = {
  VERSION, HEADER, MAX_REPLY_FRAME, MAX_REQUEST_FRAME, DATA_CHUNK, MAX_NAMES, MAX_MASK, MAX_LISTED_NAMES, MAX_PROBLEMS,
  Type, Format, Output,
  isValidName, textSize, ParseError, Builder, Reader, FrameSplitter,
  projectRequest, resolveRequest, valuesRequest, redactRequest, dataRequest, endRequest,
  parseProblems, parseError,
};
