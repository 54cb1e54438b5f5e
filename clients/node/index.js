'use strict';
/**
 * secretfs: the Node.js client of the secretfs resolver daemon
 * (`secretfs resolver --listen SOCKET`). CommonJS, Node 18 or later, no
 * dependencies. See README.md beside this file.
 *
 *     const secretfs = require('secretfs');
 *     const flow = await secretfs.resolveFlow('demo', yamlText);   // Buffer: zero it when done
 *     logStream.pipe(secretfs.redact('demo')).pipe(process.stdout);
 *
 * The functions here use one shared `Client` per socket (option `socket`,
 * else `SECRETFS_RESOLVER`, else `$SECRETFS_RUNTIME_DIR/resolver.sock` when
 * that is set, else the service's `/run/secretfs-resolver/resolver.sock`); make a `Client` of your own to choose
 * the timeout or to close it.
 */

const { Client, defaultSocket } = require('./lib/client');
const { SecretfsError, codes } = require('./lib/errors');
const { Watch } = require('./lib/watch');
const { RedactStream } = require('./lib/redact');
const { isValidName } = require('./lib/wire');

/** @type {Map<string, Client>} */
const shared = new Map();

/**
 * The shared client for `socket` (made on first use; its idle connection
 * does not keep the process alive).
 * @param {{socket?: string}} [options]
 * @returns {Client}
 */
function client(options = {}) {
  const socket = options.socket || defaultSocket();
  let c = shared.get(socket);
  if (!c || c.closed) {
    c = new Client({ socket });
    shared.set(socket, c);
  }
  return c;
}

/** `new Client(options)`. @param {import('./lib/client').ClientOptions} [options] */
function connect(options) { return new Client(options); }

module.exports = {
  Client, Watch, RedactStream, SecretfsError, codes, isValidName, defaultSocket, connect, client,
  /** @returns {Promise<Buffer>} */
  resolve: (project, document, options = {}) => client(options).resolve(project, document, options),
  /** @returns {Promise<Buffer>} */
  resolveFlow: (project, yaml, options = {}) => client(options).resolveFlow(project, yaml),
  /** @returns {Promise<Buffer>} */
  resolveConfig: (project, json, options = {}) => client(options).resolveConfig(project, json),
  /** @returns {Promise<Buffer>} */
  resolveExpression: (project, source, options = {}) => client(options).resolveExpression(project, source),
  /** @returns {Promise<Record<string, string>>} */
  bindings: (project, document, options = {}) => client(options).bindings(project, document, options),
  /** @returns {Promise<{values: Map<string, Buffer>, missing: string[]}>} */
  values: (project, names, options = {}) => client(options).values(project, names),
  /** @returns {Promise<string[]>} */
  names: (project, options = {}) => client(options).names(project),
  /** @returns {Promise<Watch>} */
  watch: (project, options = {}) => client(options).watch(project),
  /** @returns {RedactStream} */
  redact: (project, options = {}) => client(options).redact(project, options),
};
