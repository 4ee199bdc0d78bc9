// Device authentication over MQTT/TLS, end to end: the built proxy as a real process with
// certificates made by openssl, a real Mosquitto as the cloud, mosquitto_pub/mosquitto_sub with
// --cafile/--cert/--key, MQTT.js over mqtts:// and node:tls. TCP: auth-mqtt.test.ts.
import t from 'tap';
import { connect as tlsConnect, type PeerCertificate } from 'node:tls';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { cloudFor } from './helpers/mosquitto.js';
import { startProxy, type ProxyProcess } from './helpers/proxy.js';
import { connectOutcome, runTool, type Collected, type ConnectOutcome, type ToolRun } from './helpers/clients.js';
import { eventually, sleep } from './helpers/ports.js';
import { writeRegistry } from './helpers/registry.js';
import { installCert, makeCa, makeCert, serialOf, type CertFiles } from './helpers/certs.js';

interface Envelope {
  topic: string;
  deviceId: string;
  payload: unknown;
}

/** The TLS port from the ports file, and shorthands for the clients against it. */
function tlsTools(proxy: ProxyProcess, up: Collected, caFile: string) {
  const ports = proxy.ports as unknown as Record<string, number>;
  const tlsPort = ports['mqtt-tls'];
  if (!tlsPort) throw new Error(`no "mqtt-tls" in the ports file: ${JSON.stringify(ports)}`);
  const envelopes = (): Envelope[] => up.messages.map((m) => JSON.parse(m.payload.toString()) as Envelope);
  const certArgs = (c?: CertFiles): string[] => (c ? ['--cert', c.cert, '--key', c.key] : []);
  return {
    tlsPort,
    url: `mqtts://127.0.0.1:${tlsPort}`,
    /** mosquitto_pub to the TLS port, verifying the server against the test CA */
    pub: (client: CertFiles | undefined, args: string[]): Promise<ToolRun> =>
      runTool('mosquitto_pub', ['-h', '127.0.0.1', '-p', String(tlsPort), '--cafile', caFile, ...certArgs(client), ...args]),
    sub: (client: CertFiles | undefined, args: string[]): Promise<ToolRun> =>
      runTool('mosquitto_sub', ['-h', '127.0.0.1', '-p', String(tlsPort), '--cafile', caFile, ...certArgs(client), ...args]),
    /** MQTT.js options for mqtts:// with this client certificate */
    tlsOpts: (client?: CertFiles) => ({
      ca: readFileSync(caFile),
      rejectUnauthorized: true,
      ...(client ? { cert: readFileSync(client.cert), key: readFileSync(client.key) } : {}),
    }),
    envelopes,
    atCloud: (topic: string): Envelope[] => envelopes().filter((e) => e.topic === topic),
    arrived: async (topic: string): Promise<Envelope> =>
      (await eventually(`${topic} at the cloud`, () => envelopes().find((e) => e.topic === topic)))!,
    metric: (name: string, labels?: string): Promise<number> => proxy.metric(name, labels),
    /**
     * edge_connections{transport="tls"} once it reached `expected` (a gauge moves after the CONNACK);
     * the value last seen when it did not within 5 s, for the assertion to show.
     */
    connections: async (expected: number): Promise<number> => {
      let last = NaN;
      await eventually(
        `edge_connections{transport="tls"} = ${expected}`,
        async () => (last = await proxy.metric('edge_connections', 'transport="tls"')) === expected,
        5000,
      ).catch(() => undefined);
      return last;
    },
    connectionLines: async (): Promise<string> =>
      (await (await fetch(`http://127.0.0.1:${proxy.ports.admin}/metrics`)).text())
        .split('\n')
        .filter((l) => l.startsWith('edge_connections'))
        .join('; '),
  };
}

/** The server certificate a new TLS connection is shown. */
function peerCertificate(port: number, caFile: string, client: CertFiles): Promise<PeerCertificate> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect(
      { host: '127.0.0.1', port, ca: readFileSync(caFile), cert: readFileSync(client.cert), key: readFileSync(client.key) },
      () => {
        const cert = socket.getPeerCertificate();
        socket.destroy();
        resolve(cert);
      },
    );
    socket.once('error', reject);
  });
}

function closedWithin(client: { connected: boolean; once(ev: 'close', fn: () => void): unknown }, ms: number): Promise<boolean> {
  if (!client.connected) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    client.once('close', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

/**
 * A connection attempt refused as a certificate naming no device is: CONNACK 5, or a close before any
 * CONNACK. A client that was let in is closed at once.
 */
function refusal(o: ConnectOutcome): { refused: boolean; how: string } {
  if (o.ok) {
    o.client.end(true);
    return { refused: false, how: 'admitted: CONNACK 0' };
  }
  return {
    refused: o.returnCode === 5 || o.returnCode === null,
    how: o.returnCode === null ? `closed before a CONNACK: ${o.error.message}` : `CONNACK ${o.returnCode}`,
  };
}

t.test("token mode, TLS with a client CA: the certificate's CN is the device", async (t) => {
  const dir = t.testdir();
  const pki = join(dir, 'pki');
  const ca = makeCa(pki, 'edge-test-ca');
  const server = makeCert(ca, { cn: 'edge-server-1', name: 'server', kind: 'server', serial: '1001' });
  const pump7 = makeCert(ca, { cn: 'pump-7' });
  const stranger = makeCert(ca, { cn: 'stranger' });
  const rogueCa = makeCa(join(dir, 'rogue'), 'rogue-ca');
  const roguePump7 = makeCert(rogueCa, { cn: 'pump-7', name: 'rogue-pump-7' });
  const { url: cloudUrl, up } = await cloudFor(t, dir);
  const devicesFile = join(dir, 'devices.yaml');
  const tokens = writeRegistry(devicesFile, [{ id: 'pump-7' }, { id: 'pump-8' }]);
  const proxy = await startProxy(dir, {
    uplink: { url: cloudUrl },
    auth: { mode: 'token' },
    devicesFile,
    mqtt: { tls: { port: 0, cert: server.cert, key: server.key, ca: ca.cert } },
  });
  t.teardown(() => proxy.stop());
  await eventually('uplink connected', async () => (await proxy.metric('edge_uplink_connected')) === 1);
  const x = tlsTools(proxy, up, ca.cert);
  const failures = (reason: string): Promise<number> => x.metric('edge_auth_failures_total', `reason="${reason}"`);

  await t.test('a client certificate whose CN is in the registry admits the device without a password; its filters apply', async (t) => {
    const run = await x.pub(pump7, ['-i', 'pump7-tls', '-q', '1', '-t', 'devices/pump-7/status', '-m', '{"via":"tls"}']);
    t.equal(run.code, 0, `mosquitto_pub --cert exits 0 (stderr: ${run.stderr})`);
    t.match(await x.arrived('devices/pump-7/status'), { deviceId: 'pump-7', payload: { via: 'tls' } }, "it went up as the CN's device");
    const mq = await connectOutcome(x.url, { clientId: 'pump7-mq', ...x.tlsOpts(pump7) });
    if (!mq.ok) throw mq.error;
    t.teardown(() => mq.client.end(true));
    t.equal(await x.connections(1), 1, `edge_connections{transport="tls"} counts it (${await x.connectionLines()})`);
    const subs = await x.sub(pump7, [
      '-i',
      'pump7-subs',
      '-q',
      '1',
      '-t',
      'devices/pump-7/#',
      '-t',
      '#',
      '-t',
      '$SYS/#',
      '-t',
      'devices/pump-8/#',
      '-d',
      '-E',
    ]);
    t.equal(subs.code, 0);
    t.match(subs.stdout, /Subscribed \(mid: 1\): 1, 128, 128, 128\n/, 'mosquitto_sub --cert: subscriptions only inside its filters');
    await mq.client.publishAsync('devices/pump-7/inside', '1', { qos: 1 });
    mq.client.publish('devices/pump-8/outside', '1', { qos: 1 });
    t.ok(await closedWithin(mq.client, 3000), 'a publish outside its filters closes the connection');
    await x.arrived('devices/pump-7/inside');
    t.same(x.atCloud('devices/pump-8/outside'), []);
  });

  await t.test('no client certificate: refused in the handshake, counted as reason="tls"', async (t) => {
    const before = await failures('tls');
    const run = await x.pub(undefined, ['-u', 'pump-7', '-P', tokens['pump-7']!, '-q', '1', '-t', 'devices/pump-7/nocert', '-m', 'x']);
    t.not(run.code, 0, `mosquitto_pub without --cert fails (exit ${run.code}: ${run.stderr.trim()})`);
    const mq = await connectOutcome(x.url, { clientId: 'nocert-mq', ...x.tlsOpts() });
    t.notOk(mq.ok, 'MQTT.js without a certificate gets no CONNACK');
    await eventually('both counted', async () => (await failures('tls')) - before >= 2, 3000).catch(() => undefined);
    t.equal((await failures('tls')) - before, 2, 'edge_auth_failures_total{reason="tls"} +2');
    t.ok(
      await eventually(
        'the warning',
        () => proxy.logs.find((l) => l.reason === 'tls' && typeof l.msg === 'string' && l.msg.includes('TLS handshake failed')),
        3000,
      ),
      'a warning says the TLS handshake failed',
    );
    t.same(x.atCloud('devices/pump-7/nocert'), []);
  });

  await t.test('a certificate from another CA: refused, counted as reason="tls"', async (t) => {
    const before = await failures('tls');
    const run = await x.pub(roguePump7, ['-q', '1', '-t', 'devices/pump-7/rogue', '-m', 'x']);
    t.not(run.code, 0, `mosquitto_pub with the rogue certificate fails (exit ${run.code}: ${run.stderr.trim()})`);
    const mq = await connectOutcome(x.url, { clientId: 'rogue-mq', ...x.tlsOpts(roguePump7) });
    t.notOk(mq.ok, 'MQTT.js with it gets no CONNACK');
    await eventually('both counted', async () => (await failures('tls')) - before >= 2, 3000).catch(() => undefined);
    t.equal((await failures('tls')) - before, 2, 'edge_auth_failures_total{reason="tls"} +2');
    t.same(x.atCloud('devices/pump-7/rogue'), []);
  });

  await t.test('a valid certificate whose CN is not in the registry: CONNACK 5, unknown_device', async (t) => {
    const before = await failures('unknown_device');
    const run = await x.pub(stranger, ['-q', '1', '-t', 'devices/stranger/x', '-m', 'x']);
    t.equal(run.code, 5, 'mosquitto_pub exits 5: CONNACK 5');
    t.match(run.stderr, /not authori[sz]ed/);
    const mq = await connectOutcome(x.url, { clientId: 'stranger-mq', ...x.tlsOpts(stranger) });
    t.match(mq, { ok: false, returnCode: 5 }, 'MQTT.js: CONNACK 5');
    t.equal((await failures('unknown_device')) - before, 2, 'edge_auth_failures_total{reason="unknown_device"} +2');
    t.ok(await eventually('the warning', () => proxy.logs.find((l) => l.reason === 'unknown_device' && l.deviceId === 'stranger'), 3000));
  });

  await t.test("a device's certificate does not log in as another device, even with that device's token", async (t) => {
    const mq = await connectOutcome(x.url, { clientId: 'mixed', username: 'pump-8', password: tokens['pump-8']!, ...x.tlsOpts(pump7) });
    t.match(mq, { ok: false }, 'refused');
    t.not((mq as { returnCode: number | null }).returnCode, 0);
    const run = await x.pub(pump7, ['-u', 'pump-8', '-P', tokens['pump-8']!, '-q', '1', '-t', 'devices/pump-8/mixed', '-m', 'x']);
    t.not(run.code, 0, `mosquitto_pub exits ${run.code}`);
    t.same(x.atCloud('devices/pump-8/mixed'), []);
  });

  await t.test(
    'a certificate of the CA without a CN is refused, counted as reason="tls"; it does not fall back to a username and token',
    async (t) => {
      const noCn = makeCert(ca, { name: 'no-cn', subject: '/O=site' });
      const twoCns = makeCert(ca, { name: 'two-cns', subject: '/O=site/CN=pump-7/CN=pump-8' });
      const tlsFailures = (): Promise<number> => x.metric('edge_auth_failures_total', 'protocol="mqtt",reason="tls"');
      const before = await tlsFailures();
      const bare = refusal(await connectOutcome(x.url, { clientId: 'nocn-mq', ...x.tlsOpts(noCn) }));
      t.ok(bare.refused, `MQTT.js with a certificate without a CN: refused (${bare.how})`);
      const pump7 = { username: 'pump-7', password: tokens['pump-7']! };
      const withToken = refusal(await connectOutcome(x.url, { clientId: 'nocn-token', ...pump7, ...x.tlsOpts(noCn) }));
      t.ok(withToken.refused, `the same with the username and token of a registered device: still refused (${withToken.how})`);
      const run = await x.pub(noCn, ['-u', 'pump-7', '-P', tokens['pump-7']!, '-q', '1', '-t', 'devices/pump-7/no-cn', '-m', 'x']);
      t.not(run.code, 0, `mosquitto_pub with it, a username and a token: refused (exit ${run.code}: ${run.stderr.trim()})`);
      const two = refusal(await connectOutcome(x.url, { clientId: 'twocn-token', ...pump7, ...x.tlsOpts(twoCns) }));
      t.ok(two.refused, `a certificate with two CNs names no single device: refused (${two.how})`);
      await eventually('all four counted', async () => (await tlsFailures()) - before >= 4, 3000).catch(() => undefined);
      t.equal((await tlsFailures()) - before, 4, 'edge_auth_failures_total{protocol="mqtt",reason="tls"} +4');
      // The control: that username and token are good, where a token is the way in.
      const tcp = await connectOutcome(`mqtt://127.0.0.1:${proxy.ports.mqtt}`, { clientId: 'nocn-control', ...pump7 });
      t.ok(tcp.ok, 'the same username and token are admitted on the TCP port');
      if (tcp.ok) await tcp.client.endAsync();
      t.same(x.atCloud('devices/pump-7/no-cn'), [], 'nothing went up');
    },
  );

  await t.test('the TCP port of the same proxy keeps token authentication', async (t) => {
    const ok = await runTool('mosquitto_pub', [
      '-h',
      '127.0.0.1',
      '-p',
      String(proxy.ports.mqtt),
      '-u',
      'pump-8',
      '-P',
      tokens['pump-8']!,
      '-q',
      '1',
      '-t',
      'devices/pump-8/tcp',
      '-m',
      '1',
    ]);
    t.equal(ok.code, 0);
    t.equal((await x.arrived('devices/pump-8/tcp')).deviceId, 'pump-8');
    const bad = await runTool('mosquitto_pub', [
      '-h',
      '127.0.0.1',
      '-p',
      String(proxy.ports.mqtt),
      '-u',
      'pump-8',
      '-P',
      tokens['pump-7']!,
      '-q',
      '1',
      '-t',
      'devices/pump-8/tcp2',
      '-m',
      '1',
    ]);
    t.equal(bad.code, 4, 'a wrong token on TCP: exit 4');
  });

  await t.test('a renewed server certificate is used for new connections without a restart', async (t) => {
    const first = await peerCertificate(x.tlsPort, ca.cert, pump7);
    t.equal(first.serialNumber, serialOf(server.cert), 'before: the first certificate');
    t.equal(first.subject.CN, 'edge-server-1');
    const kept = await connectOutcome(x.url, { clientId: 'pump7-kept', ...x.tlsOpts(pump7) });
    if (!kept.ok) throw kept.error;
    t.teardown(() => kept.client.end(true));
    const renewed = makeCert(ca, { cn: 'edge-server-2', name: 'server-renewed', kind: 'server', serial: '2002' });
    const mark = proxy.logs.length;
    installCert(renewed, server);
    const next = await eventually(
      'a new connection sees the renewed certificate',
      async () => {
        const c = await peerCertificate(x.tlsPort, ca.cert, pump7);
        return c.serialNumber === serialOf(renewed.cert) ? c : null;
      },
      10_000,
    );
    t.equal(next!.subject.CN, 'edge-server-2', 'node:tls getPeerCertificate(): the renewed certificate');
    // The log line may reach this process a moment after the new certificate is served.
    const reloaded = await eventually('the reload was logged', () =>
      proxy.logs.slice(mark).some((l) => typeof l.msg === 'string' && l.msg.startsWith('mqtt-tls: reloaded the renewed certificate files')),
    ).catch(() => false);
    t.ok(reloaded, 'an info line says it was reloaded');
    const sClient = await runTool(
      'openssl',
      [
        's_client',
        '-connect',
        `127.0.0.1:${x.tlsPort}`,
        '-CAfile',
        ca.cert,
        '-cert',
        pump7.cert,
        '-key',
        pump7.key,
        '-verify_return_error',
      ],
      10_000,
    );
    t.match(sClient.stdout, /subject=.*CN ?= ?edge-server-2/, 'openssl s_client sees the renewed certificate');
    t.match(sClient.stdout, /Verify return code: 0 \(ok\)/);
    const run = await x.pub(pump7, ['-q', '1', '-t', 'devices/pump-7/after-renewal', '-m', '1']);
    t.equal(run.code, 0, 'client certificates are still verified against the CA and admitted');
    await x.arrived('devices/pump-7/after-renewal');
    const nocert = await x.pub(undefined, ['-u', 'pump-7', '-P', tokens['pump-7']!, '-q', '1', '-t', 'devices/pump-7/x', '-m', 'x']);
    t.not(nocert.code, 0, 'and still required');
    t.ok(kept.client.connected, 'a connection made before the renewal stays');
  });

  await t.test(
    'registry edits: a token rotation leaves a certificate connection alone; a removal disconnects it within a second',
    async (t) => {
      const cert = await connectOutcome(x.url, { clientId: 'pump7-cert', ...x.tlsOpts(pump7) });
      const byToken = await connectOutcome(`mqtt://127.0.0.1:${proxy.ports.mqtt}`, {
        clientId: 'pump7-token',
        username: 'pump-7',
        password: tokens['pump-7']!,
      });
      if (!cert.ok || !byToken.ok) throw new Error('pump-7 connects by certificate and by token');
      t.teardown(() => {
        cert.client.end(true);
        byToken.client.end(true);
      });
      // The waits are generous (10 s); how quickly it happened is a separate assertion on the time measured.
      const rotatedAt = Date.now();
      const byTokenClosed = closedWithin(byToken.client, 10_000).then((c) => ({ c, ms: Date.now() - rotatedAt }));
      writeRegistry(devicesFile, [{ id: 'pump-7' }, { id: 'pump-8', token: tokens['pump-8']! }]); // a new token for pump-7
      const rotation = await byTokenClosed;
      t.ok(rotation.c, 'the TCP connection that used the old token is closed');
      t.ok(rotation.ms < 1000, `within a second of the rotation (${rotation.ms} ms)`);
      t.notOk(await closedWithin(cert.client, 1200), 'the certificate connection stays: it used no token');
      const started = Date.now();
      const closed = closedWithin(cert.client, 10_000).then((c) => ({ c, ms: Date.now() - started }));
      writeRegistry(devicesFile, [{ id: 'pump-8', token: tokens['pump-8']! }]);
      const { c, ms } = await closed;
      t.ok(c, 'removed from the registry, the certificate connection is closed');
      t.ok(ms < 1000, `within a second of the removal (${ms} ms)`);
      const run = await x.pub(pump7, ['-q', '1', '-t', 'devices/pump-7/removed', '-m', '1']);
      t.equal(run.code, 5, 'its certificate now gets CONNACK 5 (exit 5)');
    },
  );
});

t.test('token mode, TLS without a client CA: token authentication as on TCP', async (t) => {
  const dir = t.testdir();
  const ca = makeCa(join(dir, 'pki'), 'edge-test-ca');
  const server = makeCert(ca, { cn: 'edge-server', name: 'server', kind: 'server' });
  const pump7 = makeCert(ca, { cn: 'pump-7' });
  const { url: cloudUrl, up } = await cloudFor(t, dir);
  const devicesFile = join(dir, 'devices.yaml');
  const tokens = writeRegistry(devicesFile, [{ id: 'pump-7' }, { id: 'pump-8' }]);
  const proxy = await startProxy(dir, {
    uplink: { url: cloudUrl },
    auth: { mode: 'token' },
    devicesFile,
    mqtt: { tls: { port: 0, cert: server.cert, key: server.key } },
  });
  t.teardown(() => proxy.stop());
  await eventually('uplink connected', async () => (await proxy.metric('edge_uplink_connected')) === 1);
  const x = tlsTools(proxy, up, ca.cert);
  const creds = (id: string): string[] => ['-u', id, '-P', tokens[id]!];

  await t.test('right token: publish inside goes up; outside closes the connection; subscriptions outside are refused', async (t) => {
    const run = await x.pub(undefined, [...creds('pump-7'), '-q', '1', '-t', 'devices/pump-7/status', '-m', '{"via":"tls"}']);
    t.equal(run.code, 0, `mosquitto_pub over TLS exits 0 (stderr: ${run.stderr})`);
    t.match(await x.arrived('devices/pump-7/status'), { deviceId: 'pump-7' });
    const outside = await x.pub(undefined, [...creds('pump-7'), '-q', '1', '-t', 'devices/pump-8/status', '-m', 'x']);
    t.equal(outside.code, 7, 'publish outside its filters: the connection is lost (exit 7)');
    for (const filter of ['#', '$SYS/#']) {
      const sub = await x.sub(undefined, [...creds('pump-7'), '-t', filter, '-W', '5']);
      t.match(sub.stderr, /All subscription requests were denied/, `mosquitto_sub -t '${filter}' denied`);
      t.ok(sub.ms < 4000, 'at once');
    }
    const mq = await connectOutcome(x.url, { clientId: 'pump7-mq', username: 'pump-7', password: tokens['pump-7']!, ...x.tlsOpts() });
    if (!mq.ok) throw mq.error;
    t.teardown(() => mq.client.end(true));
    t.equal(await x.connections(1), 1, `edge_connections{transport="tls"} counts it (${await x.connectionLines()})`);
    const subs = await x.sub(undefined, [
      ...creds('pump-7'),
      '-q',
      '1',
      '-t',
      'devices/pump-7/#',
      '-t',
      'broadcast/#',
      '-t',
      'devices/+/#',
      '-d',
      '-E',
    ]);
    t.match(subs.stdout, /Subscribed \(mid: 1\): 1, 1, 128\n/, 'inside granted, devices/+/# refused');
    t.same(x.atCloud('devices/pump-8/status'), []);
  });

  await t.test('wrong token: CONNACK 4; unknown device: CONNACK 5; a client certificate is no identity without a CA', async (t) => {
    const badBefore = await x.metric('edge_auth_failures_total', 'reason="bad_token"');
    const unknownBefore = await x.metric('edge_auth_failures_total', 'reason="unknown_device"');
    const wrong = await x.pub(undefined, ['-u', 'pump-7', '-P', tokens['pump-8']!, '-q', '1', '-t', 'devices/pump-7/x', '-m', 'x']);
    t.equal(wrong.code, 4, 'mosquitto_pub with a wrong token exits 4');
    const mq = await connectOutcome(x.url, { clientId: 'wrong-mq', username: 'pump-8', password: tokens['pump-7']!, ...x.tlsOpts() });
    t.match(mq, { ok: false, returnCode: 4 }, 'MQTT.js: CONNACK 4');
    const ghost = await x.pub(undefined, ['-u', 'ghost', '-P', 'ghost.x', '-q', '1', '-t', 'devices/ghost/x', '-m', 'x']);
    t.equal(ghost.code, 5, 'an unknown device: exit 5');
    const certOnly = await x.pub(pump7, ['-q', '1', '-t', 'devices/pump-7/cert-only', '-m', 'x']);
    t.equal(certOnly.code, 5, 'a certificate for pump-7 without a CA configured, no username: exit 5');
    t.equal((await x.metric('edge_auth_failures_total', 'reason="bad_token"')) - badBefore, 2, 'bad_token +2');
    t.equal((await x.metric('edge_auth_failures_total', 'reason="unknown_device"')) - unknownBefore, 2, 'unknown_device +2');
    await sleep(200);
    t.same(
      x.envelopes().filter((e) => e.topic === 'devices/pump-7/x' || e.topic.includes('ghost') || e.topic.endsWith('cert-only')),
      [],
    );
  });
});

t.test('open mode, TLS with a client CA: any certificate of the CA is admitted, its CN is the device id', async (t) => {
  const dir = t.testdir();
  const ca = makeCa(join(dir, 'pki'), 'edge-test-ca');
  const server = makeCert(ca, { cn: 'edge-server', name: 'server', kind: 'server' });
  const pump7 = makeCert(ca, { cn: 'pump-7' });
  const stranger = makeCert(ca, { cn: 'stranger' });
  const { url: cloudUrl, up } = await cloudFor(t, dir);
  const proxy = await startProxy(dir, {
    uplink: { url: cloudUrl },
    auth: { mode: 'open' },
    mqtt: { tls: { port: 0, cert: server.cert, key: server.key, ca: ca.cert } },
  });
  t.teardown(() => proxy.stop());
  await eventually('uplink connected', async () => (await proxy.metric('edge_uplink_connected')) === 1);
  const x = tlsTools(proxy, up, ca.cert);

  const run = await x.pub(pump7, ['-q', '1', '-t', 'devices/pump-7/open-tls', '-m', '1']);
  t.equal(run.code, 0);
  t.equal((await x.arrived('devices/pump-7/open-tls')).deviceId, 'pump-7', 'the CN is the device id');
  const other = await x.pub(stranger, ['-i', 'some-client', '-q', '1', '-t', 'devices/anything/open-tls', '-m', '1']);
  t.equal(other.code, 0, 'a CN that no registry lists is admitted in open mode');
  t.equal((await x.arrived('devices/anything/open-tls')).deviceId, 'stranger', 'under its CN, not its client id');
  const before = await proxy.metric('edge_auth_failures_total', 'reason="tls"');
  const nocert = await x.pub(undefined, ['-q', '1', '-t', 'devices/nocert/open-tls', '-m', '1']);
  t.not(nocert.code, 0, 'without a certificate: refused, open mode or not');
  await eventually('counted', async () => (await proxy.metric('edge_auth_failures_total', 'reason="tls"')) > before, 3000).catch(
    () => undefined,
  );
  t.equal((await proxy.metric('edge_auth_failures_total', 'reason="tls"')) - before, 1, 'edge_auth_failures_total{reason="tls"} +1');
  const dollar = await x.pub(pump7, ['-q', '1', '-t', '$SYS/forged', '-m', 'x']);
  t.equal(dollar.code, 0, 'a $ publish is acknowledged');
  t.equal(await proxy.metric('edge_messages_dropped_total', 'reason="reserved_topic"'), 1, 'and dropped');

  await t.test(
    'a CN that is no valid device id (edge, a/b) is refused, counted as reason="tls"; a valid one is the device id',
    async (t) => {
      const tlsFailures = (): Promise<number> => x.metric('edge_auth_failures_total', 'protocol="mqtt",reason="tls"');
      const before = await tlsFailures();
      const bad = [
        { cert: makeCert(ca, { cn: 'edge' }), what: 'CN "edge" (the proxy\'s own id)', topic: 'devices/cn-edge/x' },
        { cert: makeCert(ca, { cn: 'a/b', name: 'slash-cn' }), what: 'CN "a/b"', topic: 'devices/cn-slash/x' },
      ];
      for (const [i, { cert, what, topic }] of bad.entries()) {
        const run = await x.pub(cert, ['-i', `bad-cn-cli-${i}`, '-q', '1', '-t', topic, '-m', 'x']);
        t.not(run.code, 0, `${what}: mosquitto_pub is refused (exit ${run.code}: ${run.stderr.trim()})`);
        // A client id that is a valid device id: open mode does not fall back to it.
        const mq = refusal(await connectOutcome(x.url, { clientId: `bad-cn-mq-${i}`, ...x.tlsOpts(cert) }));
        t.ok(mq.refused, `${what}: MQTT.js is refused too, not admitted under its client id (${mq.how})`);
      }
      await eventually('all four counted', async () => (await tlsFailures()) - before >= 4, 3000).catch(() => undefined);
      t.equal((await tlsFailures()) - before, 4, 'edge_auth_failures_total{protocol="mqtt",reason="tls"} +4');
      const valid = makeCert(ca, { cn: 'site.hall-2:pump_9', name: 'valid-cn' });
      const ok = await x.pub(valid, ['-i', 'valid-cn-cli', '-q', '1', '-t', 'devices/pump-9/cn-ok', '-m', '1']);
      t.equal(ok.code, 0, `a valid CN (site.hall-2:pump_9): admitted (stderr: ${ok.stderr})`);
      t.equal((await x.arrived('devices/pump-9/cn-ok')).deviceId, 'site.hall-2:pump_9', 'with its CN as the device id');
      t.same(
        x.envelopes().filter((e) => bad.some((b) => b.topic === e.topic)),
        [],
        'nothing of the refused ones went up',
      );
    },
  );
});
