// Builds the TypeScript sources when the build is missing or older than a source file,
// so `npm start` works straight after `npm ci`.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';

const root = new URL('..', import.meta.url).pathname;
if (!existsSync(join(root, 'node_modules'))) {
  console.error('node_modules is missing: run `npm ci` first');
  process.exit(1);
}
const built = join(root, 'dist/src/cli.js');

function newest(dir) {
  let t = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name);
    t = Math.max(t, entry.isDirectory() ? newest(p) : entry.name.endsWith('.ts') ? statSync(p).mtimeMs : 0);
  }
  return t;
}

const sources = Math.max(
  ...['src', 'firmware-sim', 'bench', 'train'].filter((d) => existsSync(join(root, d))).map((d) => newest(join(root, d))),
  statSync(join(root, 'tsconfig.json')).mtimeMs,
);
if (!existsSync(built) || statSync(built).mtimeMs < sources) {
  console.error('building (tsc)...');
  const r = spawnSync(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '-p', join(root, 'tsconfig.json')], {
    stdio: 'inherit',
  });
  if (r.status !== 0) process.exit(r.status ?? 1);
  await import('./mark-executable.mjs');
}
