#!/usr/bin/env node
'use strict';
// A minimal flow runner on the secretfs Node client.
//
//   node run.js --project demo [--socket SOCKET] [--outputs JSON|@FILE] FLOW.yaml "BLOCK NAME"
//
// It asks the resolver daemon for the resolved flow (every `secrets.NAME` in
// an `!expr` replaced by the value), evaluates each `!expr` of one block with
// `outputs` bound, in a fresh `vm` context, and prints `PATH: RESULT` lines
// through the daemon's redaction stream, so no value reaches stdout in clear
// (not even inside an error message that quotes the source).
//
// Exit status: 0, 1 (the flow or a block is wrong), 14 (the flow cannot be
// resolved: every problem with its location on stderr), 15 (the daemon
// cannot be reached or refused), 64 (usage), as `secretfs` uses them.
//
// `vm` is not a security boundary: this runs the flow's own code, as a runtime does.

const fs = require('node:fs');
const path = require('node:path');
const { PassThrough, pipeline } = require('node:stream');
const vm = require('node:vm');
const secretfs = require('../../clients/node');

/** js-yaml from Debian's node-js-yaml (in /usr/share/nodejs), or wherever `require` finds it. */
function loadYAML() {
  for (const id of ['js-yaml', '/usr/share/nodejs/js-yaml']) {
    try {
      return require(id);
    } catch (e) {
      if (e.code !== 'MODULE_NOT_FOUND') throw e;
    }
  }
  fail(1, 'js-yaml is not installed', 'apt-get install node-js-yaml');
}

function fail(status, message, hint) {
  process.stderr.write(`run.js: error: ${message}\n${hint ? `hint: ${hint}\n` : ''}`);
  process.exit(status);
}

function usage(message) {
  fail(64, message, 'node run.js --project PROJECT [--socket SOCKET] [--outputs JSON|@FILE] FLOW.yaml "BLOCK NAME"');
}

function parseArguments(argv) {
  const options = { project: null, socket: undefined, outputs: '{}', files: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--project' || a === '--socket' || a === '--outputs') {
      if (i + 1 >= argv.length) usage(`${a} needs a value`);
      options[a.slice(2)] = argv[++i];
    } else if (a.startsWith('--')) {
      usage(`unknown option ${a}`);
    } else {
      options.files.push(a);
    }
  }
  if (!options.project) usage('--project is required');
  if (options.files.length !== 2) usage('give the flow file and the name of one block');
  const text = options.outputs.startsWith('@') ? fs.readFileSync(options.outputs.slice(1), 'utf8') : options.outputs;
  try {
    options.outputs = JSON.parse(text);
  } catch (e) {
    usage(`--outputs is not JSON: ${e.message}`);
  }
  return options;
}

/** An `!expr` scalar: JavaScript source, evaluated by the runtime. */
class Expr {
  constructor(source) { this.source = source; }
}

/** Every `!expr` under `node`, with its path (`inputs.default.config.body`). */
function expressions(node, at, out) {
  if (node instanceof Expr) {
    out.push([at, node]);
  } else if (Array.isArray(node)) {
    node.forEach((v, i) => expressions(v, `${at}[${i}]`, out));
  } else if (node !== null && typeof node === 'object') {
    for (const [k, v] of Object.entries(node)) expressions(v, at ? `${at}.${k}` : k, out);
  }
  return out;
}

function show(value) {
  if (value === undefined) return 'undefined';
  if (typeof value === 'function') return '[function]';
  return JSON.stringify(value);
}

async function main() {
  const options = parseArguments(process.argv.slice(2));
  const [flowFile, blockName] = options.files;
  const yaml = loadYAML();
  const schema = yaml.DEFAULT_SCHEMA.extend([new yaml.Type('!expr', {
    kind: 'scalar', construct: (data) => new Expr(data === null ? '' : data), instanceOf: Expr,
  })]);
  const client = new secretfs.Client({ socket: options.socket });

  let flow;
  const resolved = await client.resolveFlow(options.project, fs.readFileSync(flowFile));
  try {
    flow = yaml.load(resolved.toString('utf8'), { schema, filename: path.basename(flowFile) });
  } catch (e) {
    // Never e.message: js-yaml quotes the lines around the error, and these hold values.
    const where = e && e.mark ? ` at ${e.mark.line + 1}:${e.mark.column + 1}` : '';
    fail(1, `the resolved flow does not parse${where}: ${e && e.reason}`);
  } finally {
    resolved.fill(0);
  }
  const blocks = Array.isArray(flow && flow.blocks) ? flow.blocks : [];
  const block = blocks.find((b) => b && b.name === blockName);
  if (!block) {
    fail(1, `no block named ${JSON.stringify(blockName)} in ${flowFile}`,
      `its blocks are ${blocks.map((b) => JSON.stringify(b && b.name)).join(', ') || 'none'}`);
  }

  // Everything printed goes through the daemon's redaction of the project.
  const out = new PassThrough();
  const done = new Promise((resolve, reject) => {
    pipeline(out, client.redact(options.project), process.stdout, (e) => (e ? reject(e) : resolve()));
  });
  for (const [at, expr] of expressions(block, '', [])) {
    let line;
    try {
      const script = new vm.Script(`(\n${expr.source}\n)`, { filename: `${blockName} ${at}` });
      line = show(script.runInNewContext({ outputs: options.outputs }, { timeout: 1000 }));
    } catch (e) {
      line = `error: ${e && e.name}: ${e && e.message}`;
    }
    out.write(`${blockName} ${at}: ${line}\n`);
  }
  out.end();
  await done;
  client.close();
}

main().catch((e) => {
  if (e instanceof secretfs.SecretfsError) {
    fail(e.codeName === 'problems' ? 14 : 15, e.message, e.hint);
  }
  fail(1, e && e.message);
});
