'use strict';
// node resolve.js PROJECT FORMAT FILE [OUTPUT]
// Writes what the daemon resolves FILE to (format flow|config|expr, output
// document|bindings) on stdout, byte for byte; on a SecretfsError, prints it
// as JSON on stdout and exits 3. The daemon's socket is SECRETFS_RESOLVER.
const fs = require('node:fs');
const secretfs = require('../..');

const [project, format, file, output = 'document'] = process.argv.slice(2);
secretfs.resolve(project, fs.readFileSync(file), { format, output }).then((out) => {
  process.stdout.write(out, () => out.fill(0));
}, (e) => {
  if (!(e instanceof secretfs.SecretfsError)) throw e;
  process.stdout.write(JSON.stringify({ name: e.name, code: e.code, codeName: e.codeName, message: e.message,
    hint: e.hint, problems: e.problems }) + '\n');
  process.exitCode = 3;
});
