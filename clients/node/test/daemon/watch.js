'use strict';
// node watch.js PROJECT
// Watches PROJECT through the daemon at SECRETFS_RESOLVER and prints each
// event on a line. Runs the shell commands CHANGE (once watching), RESTART
// (after the first change: restart the daemon) and CHANGE_AGAIN (once
// restored), then exits 0; exits 1 if a step does not come within 15 s.
const { execSync } = require('node:child_process');
const secretfs = require('../..');

const [project] = process.argv.slice(2);
const sh = (cmd) => execSync(cmd, { stdio: ['ignore', 'ignore', 'inherit'], shell: '/bin/sh' });
const say = (line) => process.stdout.write(line + '\n');

function next(watch, event) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no '${event}' within 15 s`)), 15000);
    watch.once(event, (arg) => { clearTimeout(timer); resolve(arg); });
  });
}

async function main() {
  const watch = await secretfs.watch(project);
  say(`watching mountWatched=${watch.mountWatched}`);
  watch.on('change', (c) => say(`change ${c.names.join(',')} complete=${c.complete}`));
  watch.on('lost', (e) => say(`lost ${e.codeName}`));
  watch.on('restored', (r) => say(`restored mountWatched=${r.mountWatched}`));
  let change = next(watch, 'change');
  sh(process.env.CHANGE);
  await change;
  const lost = next(watch, 'lost');
  const restored = next(watch, 'restored');
  sh(process.env.RESTART);
  await lost;
  await restored;
  change = next(watch, 'change');
  sh(process.env.CHANGE_AGAIN);
  await change;
  watch.close();
  say('closed');
}
main().catch((e) => { say(`failed: ${e.codeName || ''} ${e.message}`); process.exit(1); });
