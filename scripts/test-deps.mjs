// The tests run against real parts: Mosquitto as the cloud broker and its command-line clients, and
// Debian's Chromium for the status page (driven by playwright-core, which downloads no browser).
// This checks they are installed, and installs them with apt-get when it can (as root on Debian).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';

const needed = {
  mosquitto: 'mosquitto',
  mosquitto_pub: 'mosquitto-clients',
  mosquitto_sub: 'mosquitto-clients',
  chromium: 'chromium',
  curl: 'curl',
  openssl: 'openssl',
};
const path = `${process.env.PATH ?? ''}:/usr/sbin:/usr/local/sbin`;
const has = (cmd) => path.split(':').some((dir) => dir && existsSync(`${dir}/${cmd}`));
const missing = [
  ...new Set(
    Object.entries(needed)
      .filter(([cmd]) => !has(cmd))
      .map(([, pkg]) => pkg),
  ),
];
if (missing.length === 0) process.exit(0);

const install = `apt-get install -y ${missing.join(' ')}`;
const canInstall = process.getuid?.() === 0 && has('apt-get');
if (!canInstall) {
  console.error(
    `The tests need ${missing.join(' and ')} (real brokers and clients, not mocks). Install with:\n  sudo apt-get update && sudo ${install}`,
  );
  process.exit(1);
}
console.error(`installing ${missing.join(' ')} for the tests...`);
const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
for (const cmd of ['apt-get update -qq', `${install} -qq`]) {
  const r = spawnSync('sh', ['-c', cmd], { stdio: 'inherit', env });
  if (r.status !== 0) process.exit(r.status ?? 1);
}
