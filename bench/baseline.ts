// The yardstick: a bare aedes broker whose 'publish' events an in-memory MQTT.js client forwards
// to the cloud at QoS 1. No durability, no checks, nothing acknowledged late: what the proxy is
// measured against. Run as its own process by the benchmark: node dist/bench/baseline.js CLOUD_URL PORTS_FILE
import { createServer } from 'node:net';
import { writeFileSync } from 'node:fs';
import { Aedes } from 'aedes';
import mqtt from 'mqtt';

const [cloudUrl, portsFile] = process.argv.slice(2);
const cloud = await mqtt.connectAsync(cloudUrl!, { clientId: 'baseline-forwarder' });
const broker = await Aedes.createBroker({});
broker.on('publish', (packet, client) => {
  if (client) cloud.publish(`edge/bench/up/${packet.topic}`, packet.payload, { qos: 1 });
});
const server = createServer(broker.handle);
server.listen(0, '127.0.0.1', () => {
  const addr = server.address();
  writeFileSync(portsFile!, JSON.stringify({ mqtt: typeof addr === 'object' && addr ? addr.port : 0, admin: 0 }));
});
process.on('SIGTERM', () => process.exit(0));
