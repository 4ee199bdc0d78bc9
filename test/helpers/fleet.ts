import { startFleet, type Fleet, type FleetOptions } from '../../firmware-sim/fleet.js';
import { coapPort } from './coap.js';
import type { ProxyProcess } from './proxy.js';

/** A simulated fleet pointed at every endpoint of a test proxy, its log lines kept in `lines`. */
export function fleetOf(proxy: ProxyProcess, options: FleetOptions, lines: string[] = []): Fleet {
  return startFleet({
    url: `mqtt://127.0.0.1:${proxy.ports.mqtt}`,
    httpUrl: `ws://127.0.0.1:${proxy.ports.http}`,
    coapUrl: `coap://127.0.0.1:${coapPort(proxy)}`,
    log: (l) => lines.push(l),
    ...options,
  });
}
