// The rules directory is watched: an edit reloads the whole set, a set with errors changes nothing,
// each accepted content is a version kept across restarts, and unchanged rules keep their windows.
import t from 'tap';
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startProxy } from './helpers/proxy.js';
import { connectClient } from './helpers/clients.js';
import { eventually } from './helpers/ports.js';

const COUNTING = `rule third
when msg.topic matches "devices/+/telemetry" and count(3) == 3
then log("info", "third message")
end
`;

t.test('an edit reloads the rules; a bad edit changes nothing; unchanged rules keep their window state', async (t) => {
  const dir = t.testdir();
  const rulesDir = join(dir, 'rules');
  mkdirSync(rulesDir, { recursive: true });
  writeFileSync(join(rulesDir, 'a.rules'), COUNTING);
  const proxy = await startProxy(dir);
  t.teardown(() => proxy.stop());
  t.equal(await proxy.metric('edge_rules_version'), 1, 'the first set is version 1');
  t.equal(readdirSync(join(dir, 'data', 'rules-history')).length, 1, 'and is kept in the history');
  const device = await connectClient(proxy.ports.mqtt, { clientId: 'reload-1' });
  t.teardown(() => device.endAsync());
  await device.publishAsync('devices/reload-1/telemetry', '{"t":1}', { qos: 1 });
  await device.publishAsync('devices/reload-1/telemetry', '{"t":2}', { qos: 1 });

  // A new file beside it: the whole set reloads, the unchanged rule keeps its count of 2.
  writeFileSync(join(rulesDir, 'b.rules'), 'rule hot\nwhen payload.t > 5\nthen log("warn", "hot")\nend\n');
  await eventually('version 2 running', async () => (await proxy.metric('edge_rules_version')) === 2, 10_000);
  await device.publishAsync('devices/reload-1/telemetry', '{"t":9}', { qos: 1 });
  await eventually('the new rule fired', async () => (await proxy.metric('edge_rules_fired_total', 'rule="hot"')) === 1);
  t.equal(
    await proxy.metric('edge_rules_fired_total', 'rule="third"'),
    1,
    'the unchanged rule saw its third message: its window carried over',
  );

  writeFileSync(join(rulesDir, 'b.rules'), 'rule hot\nwhen payload.t > 5\nthen lgo("warn", "hot")\nend\n');
  await eventually('the bad edit is counted', async () => (await proxy.metric('edge_rules_reload_failures_total')) === 1, 10_000);
  t.equal(await proxy.metric('edge_rules_version'), 2, 'and changes nothing');
  t.equal(await proxy.metric('edge_rules_pushes_total'), 0, 'an edit is not counted as a push');
  t.ok(
    proxy.logs.some(
      (l) => l.level === 'error' && String((l.listing as string | undefined) ?? '').includes('b.rules:3:6: E_RULE_UNKNOWN_ACTION'),
    ),
    'the log lists every error with its place',
  );
  await device.publishAsync('devices/reload-1/telemetry', '{"t":10}', { qos: 1 });
  await eventually('the old set still runs', async () => (await proxy.metric('edge_rules_fired_total', 'rule="hot"')) === 2);

  writeFileSync(join(rulesDir, 'b.rules'), 'rule hot\nwhen payload.t > 5\nthen log("warn", "hot")\nend\n');
  await new Promise((r) => setTimeout(r, 1000));
  t.equal(await proxy.metric('edge_rules_version'), 2, 'the same content again makes no new version');

  await proxy.stop();
  await proxy.restart();
  t.equal(await proxy.metric('edge_rules_version'), 2, 'after a restart the same set is still version 2');
});
