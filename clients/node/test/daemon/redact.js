'use strict';
// node redact.js PROJECT
// Sends, through secretfs.redact(PROJECT), the value in VALUE (test only)
// split at every position across two writes ("K=" + head, tail + "\n"), then
// one write of 200000 'x' with the value across the first 64 KiB frame
// boundary, then "end" with no newline; writes the redacted output on stdout.
const secretfs = require('../..');

const [project] = process.argv.slice(2);
const value = Buffer.from(process.env.VALUE, 'utf8');
const stream = secretfs.redact(project);
stream.on('error', (e) => {
  process.stderr.write(`redact.js: ${e.codeName}: ${e.message}\n`);
  process.exitCode = 3;
});
stream.on('skipped', (list) => process.stderr.write(`skipped: ${list.map((s) => s.name).join(',')}\n`));
stream.pipe(process.stdout);
for (let k = 1; k < value.length; k++) {
  stream.write(Buffer.concat([Buffer.from(`${k}=`), value.subarray(0, k)]));
  stream.write(Buffer.concat([value.subarray(k), Buffer.from('\n')]));
}
const big = Buffer.alloc(200000, 'x');
value.copy(big, 65536 - 5);
big[199999] = 0x0a;
stream.write(big);
stream.end('end');
