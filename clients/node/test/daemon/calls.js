'use strict';
// node calls.js PROJECT DOCUMENT [IDLE_MS]
// names, values and bindings through the daemon at SECRETFS_RESOLVER,
// printed as one JSON object. With IDLE_MS, waits that long and asks for the
// names again on the same client (the daemon may have closed the idle connection).
const secretfs = require('../..');

async function main() {
  const [project, document, idle] = process.argv.slice(2);
  const client = new secretfs.Client();
  const report = {};
  report.names = await client.names(project);
  const got = await client.values(project, ['API_TOKEN', 'NOT_THERE', 'API_TOKEN']);
  report.found = [...got.values.keys()];
  report.missing = got.missing;
  report.valueLength = got.values.get('API_TOKEN').length;
  for (const v of got.values.values()) v.fill(0);
  report.zeroed = [...got.values.values()].every((v) => v.every((b) => b === 0));
  report.bindings = await client.bindings(project, document, { format: 'config' });
  if (idle) {
    await new Promise((resolve) => setTimeout(resolve, Number(idle)));
    report.namesAfterIdle = await client.names(project);
  }
  client.close();
  process.stdout.write(JSON.stringify(report) + '\n');
}
main().catch((e) => { process.stdout.write(JSON.stringify({ error: e.codeName, message: e.message }) + '\n'); process.exitCode = 3; });
