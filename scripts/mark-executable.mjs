// tsc writes files without the executable bit; the package's bin (npx edge-proxy) needs it.
import { chmodSync } from 'node:fs';

chmodSync(new URL('../dist/src/cli.js', import.meta.url), 0o755);
