// Runs the tap suite, then prints the one closing line CI reads: "N passed, N failed".
// tap keeps each test file's TAP output in .tap/test-results; the counts come from there.
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const results = join(root, '.tap/test-results');
rmSync(results, { recursive: true, force: true });

const tap = spawn(process.execPath, [join(root, 'node_modules/tap/dist/esm/run.mjs'), ...process.argv.slice(2)], {
  stdio: 'inherit',
  cwd: root,
});
const code = await new Promise((resolve) => tap.on('exit', (c, signal) => resolve(c ?? (signal ? 1 : 0))));

function files(dir) {
  if (!existsSync(dir)) return [];
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    return statSync(p).isDirectory() ? files(p) : p.endsWith('.tap') ? [p] : [];
  });
}

// Every assertion and every subtest is a TAP test point ("ok"/"not ok"). A subtest is announced
// by "# Subtest" at its parent's indentation and closed by a point at the same indentation, which
// summarises its children: only the other points (the assertions) are counted.
let passed = 0;
let failed = 0;
let skipped = 0;
for (const file of files(results)) {
  const openSubtest = new Map(); // indentation -> failures counted when it opened
  let filePoints = 0;
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    const sub = /^(\s*)# Subtest/.exec(line);
    if (sub) {
      openSubtest.set(sub[1].length, failed);
      continue;
    }
    const m = /^(\s*)(not ok|ok) \d+/.exec(line);
    if (!m) continue;
    const indent = m[1].length;
    if (openSubtest.has(indent)) {
      const failedBefore = openSubtest.get(indent);
      openSubtest.delete(indent);
      // a subtest that failed with no failing assertion inside (a timeout, a throw) still counts once
      if (m[2] === 'not ok' && !/# (SKIP|TODO)/i.test(line) && failed === failedBefore) {
        failed++;
        filePoints++;
      }
      continue;
    }
    filePoints++;
    if (/# SKIP/i.test(line)) skipped++;
    else if (m[2] === 'ok' || /# TODO/i.test(line)) passed++;
    else failed++;
  }
  if (filePoints === 0) failed++; // a file that ran no test at all is a failure, not a silent pass
}
if (code !== 0 && failed === 0) failed = 1; // tap failed for a reason not in the results (a crash, a timeout)
console.log(`${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`);
process.exit(code);
