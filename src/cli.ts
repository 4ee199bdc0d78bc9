#!/usr/bin/env node
// The edge-proxy executable (package.json "bin"); the verbs are in cli/.
import { main } from './cli/main.js';

await main(process.argv.slice(2));
