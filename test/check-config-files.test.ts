// `edge-proxy check-config` and `edge-proxy run` refuse the same configuration with the same lines
// (docs/configuration.md, Errors): the device registry parsed as the running registry parses it, the
// TLS files of every endpoint loaded as node:tls loads them, and every problem listed at once.
import t, { type Test } from 'tap';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { runCli, type CliRun } from './helpers/proxy.js';
import { makeCa, makeCert } from './helpers/certs.js';

/** Writes `config` (with its own data and rules directories and free ports) as edge-proxy.yaml in `dir`. */
function writeConfig(dir: string, config: Record<string, unknown>, text = ''): string {
  const base = { edge: { id: 'cc-test' }, dataDir: './data', rules: { dir: './rules' }, admin: { port: 0 }, http: { port: 0 } };
  writeFileSync(join(dir, 'edge-proxy.yaml'), text || stringify({ ...base, ...config, mqtt: { port: 0, ...(config.mqtt as object) } }));
  return join(dir, 'edge-proxy.yaml');
}

/** check-config, then run, on the same file: both must refuse it, with the same listing. */
async function both(t: Test, dir: string): Promise<{ check: CliRun; run: CliRun; lines: string[] }> {
  const check = await runCli(['check-config', 'edge-proxy.yaml'], dir);
  const run = await runCli(['run', '--config', 'edge-proxy.yaml', '--ports-file', join(dir, 'ports.json')], dir);
  t.equal(check.status, 1, `check-config refuses it: ${check.stdout}${check.stderr}`);
  t.equal(check.stdout, '', 'and says no OK');
  t.equal(run.status, 1, 'run refuses it');
  t.equal(run.stderr, check.stderr, 'with the very same listing');
  t.notMatch(run.stdout, /"msg":"cache open"/, 'run stops before anything starts');
  return { check, run, lines: check.stderr.trimEnd().split('\n') };
}

const sha = (c: string) => c.repeat(64);
/** A path as a regular expression matches it. */
const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

t.test('token mode: the registry is parsed as the proxy parses it, each problem at its own file:line:col', async (t) => {
  const dir = t.testdir({
    'devices.yaml': [
      '- id: pump-7', //                           1
      `  tokenSha256: ${sha('a')}`, //             2
      '- id: pump-7', //                           3
      `  tokenSha256: ${sha('b')}`, //             4
      '  publsh: ["devices/pump-7/#"]', //         5
      '- id: fan-1', //                            6
      '  tokenSha256: abcd', //                    7
      '',
    ].join('\n'),
  });
  writeConfig(dir, { auth: { mode: 'token' }, devicesFile: 'devices.yaml' });
  const file = join(dir, 'devices.yaml');
  const { lines } = await both(t, dir);
  t.same(lines, [
    'configuration has 3 problems:',
    `${file}:3:7: [1].id: E_REGISTRY: device id \`pump-7\` is already used by the device on line 1; ids must be unique`,
    `${file}:5:3: [1].publsh: E_REGISTRY: unknown key \`publsh\`: did you mean \`publish\`?`,
    `${file}:7:16: [2].tokenSha256: E_REGISTRY: tokenSha256 must be the SHA-256 of the device's token as 64 hex characters (got 4 characters); \`edge-proxy devices rotate\` writes a new one`,
  ]);

  // Fixed, check-config says OK.
  writeFileSync(file, `- id: pump-7\n  tokenSha256: ${sha('a')}\n- id: fan-1\n  tokenSha256: ${sha('c')}\n`);
  const ok = await runCli(['check-config', 'edge-proxy.yaml'], dir);
  t.equal(ok.status, 0, ok.stderr);
  t.match(ok.stdout, /edge-proxy\.yaml: OK/);

  // Open mode reads no registry, so a broken one is not looked at.
  writeFileSync(file, 'not: [a registry\n');
  writeConfig(dir, { devicesFile: 'devices.yaml', auth: { mode: 'open' } });
  t.equal((await runCli(['check-config', 'edge-proxy.yaml'], dir)).status, 0, 'open mode: the registry is not read');
});

t.test('TLS files that are not PEM, or a key that is not the certificate’s: E_TLS at the key, for mqtt, http and uplink', async (t) => {
  const dir = t.testdir({ 'junk.pem': 'not a certificate\n', 'ca-junk.pem': 'not a CA either\n' });
  const ca = makeCa(join(dir, 'pki'), 'ca');
  const server = makeCert(ca, { cn: 'edge', name: 'server', kind: 'server' });
  const other = makeCert(ca, { cn: 'other', name: 'other', kind: 'server' });
  const client = makeCert(ca, { cn: 'edge-client', name: 'client' });
  const text = [
    'edge: { id: cc-tls }',
    'dataDir: ./data',
    'rules: { dir: ./rules }',
    'admin: { port: 0 }',
    'mqtt:', //                                                                   5
    '  port: 0',
    `  tls: { port: 0, cert: junk.pem, key: ${server.key} }`, //               7
    'http:', //                                                                   8
    '  port: 0',
    `  tls: { cert: ${server.cert}, key: ${other.key} }`, //                   10
    'uplink:', //                                                                 11
    '  url: mqtts://127.0.0.1:1', //                                              12
    `  tls: { ca: ca-junk.pem, cert: ${client.cert}, key: ${server.key} }`, // 13
    '',
  ].join('\n');
  writeConfig(dir, {}, text);
  const { lines } = await both(t, dir);
  t.equal(lines[0], 'configuration has 4 problems:');
  t.match(lines.slice(1), [
    new RegExp(
      `^edge-proxy\\.yaml:7:25: mqtt\\.tls\\.cert: E_TLS: ${esc(join(dir, 'junk.pem'))} cannot be used: it is not a PEM certificate \\(.*no start line\\)$`,
    ),
    new RegExp(
      `^edge-proxy\\.yaml:10:\\d+: http\\.tls\\.key: E_TLS: ${esc(other.key)} cannot be used: it is not the private key of the certificate ${esc(server.cert)} \\(.*mismatch\\)$`,
    ),
    new RegExp(
      `^edge-proxy\\.yaml:13:14: uplink\\.tls\\.ca: E_TLS: ${esc(join(dir, 'ca-junk.pem'))} cannot be used: it holds no PEM certificate`,
    ),
    new RegExp(
      `^edge-proxy\\.yaml:13:\\d+: uplink\\.tls\\.key: E_TLS: ${esc(server.key)} cannot be used: it is not the private key of the certificate ${esc(client.cert)}`,
    ),
  ]);

  // The same keys with usable files: check-config passes.
  writeConfig(
    dir,
    {},
    text
      .replace('cert: junk.pem', `cert: ${server.cert}`)
      .replace(`key: ${other.key}`, `key: ${server.key}`)
      .replace('ca: ca-junk.pem', `ca: ${ca.cert}`)
      .replace(`cert: ${client.cert}, key: ${server.key}`, `cert: ${client.cert}, key: ${client.key}`),
  );
  const ok = await runCli(['check-config', 'edge-proxy.yaml'], dir);
  t.equal(ok.status, 0, ok.stderr);
});

t.test('every problem at once: schema problems and the files named by the keys that are sound', async (t) => {
  const dir = t.testdir({ 'devices.yaml': '- id: pump-7\n  tokenSha256: 1234\n' });
  const text = [
    'edge: { id: cc-all }',
    'dataDir: ./data',
    'rules: { dir: ./rules }',
    'auth: { mode: token }',
    'devicesFile: devices.yaml', //                        5
    'mqtt:',
    '  prot: 1884', //                                     7
    '  tls: { cert: 5, key: server.key }', //              8
    'admin: { port: 70000 }', //                           9
    'uplink:',
    '  url: mqtts://broker.example.com:8883',
    '  tls: { ca: /etc/edge-proxy/no-such-ca.pem }', //    12
    '',
  ].join('\n');
  writeConfig(dir, {}, text);
  const { lines } = await both(t, dir);
  t.same(lines, [
    'configuration has 6 problems:',
    'edge-proxy.yaml:7:3: mqtt.prot: E_CONFIG_UNKNOWN_KEY: unknown key `prot`: did you mean `port`?',
    'edge-proxy.yaml:8:16: mqtt.tls.cert: E_CONFIG_TYPE: must be a string or null, not the number 5',
    // Its certificate unknown, the endpoint does not run: server.key (which does not exist) is not read.
    "edge-proxy.yaml:8:24: mqtt.tls.key: E_CONFIG_VALUE: mqtt.tls.cert must be set too: the TLS endpoint's certificate needs its key",
    'edge-proxy.yaml:9:16: admin.port: E_CONFIG_VALUE: must be between 0 and 65535, not 70000',
    'edge-proxy.yaml:12:14: uplink.tls.ca: E_CONFIG_FILE: cannot read /etc/edge-proxy/no-such-ca.pem: no such file',
    `${join(dir, 'devices.yaml')}:2:16: [0].tokenSha256: E_REGISTRY: tokenSha256 must be the SHA-256 of the device's token as 64 hex characters (got 4 characters); \`edge-proxy devices rotate\` writes a new one`,
  ]);
});
