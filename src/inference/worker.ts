// The inference worker: owns every ONNX Runtime session. onnxruntime-node creates sessions and runs
// them synchronously on the calling thread, so they live here and the event loop that serves devices
// never waits for a model.

import { parentPort } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import * as ort from 'onnxruntime-node';
import type { TensorInfo, WorkerReply, WorkerRequest } from './worker-protocol.js';

const port = parentPort;
if (!port) throw new Error('worker.ts runs as a worker thread');

const sessions = new Map<string, ort.InferenceSession>();

function info(meta: readonly ort.InferenceSession.ValueMetadata[]): TensorInfo[] {
  return meta.map((m) =>
    m.isTensor
      ? { name: m.name, type: m.type, shape: m.shape.map((d) => (typeof d === 'number' ? d : String(d))) }
      : { name: m.name, type: null, shape: [] },
  );
}

async function handle(req: WorkerRequest): Promise<{ reply: WorkerReply; transfer: ArrayBuffer[] }> {
  switch (req.op) {
    case 'load': {
      const session = await ort.InferenceSession.create(req.bytes, {
        executionProviders: ['cpu'],
        intraOpNumThreads: req.threads,
        interOpNumThreads: 1,
        executionMode: 'sequential',
        graphOptimizationLevel: 'all',
        // Idle pool threads would otherwise spin for a while after each run, burning a core of a
        // small board that the devices' traffic needs.
        extra: { session: { intra_op: { allow_spinning: '0' } } },
      });
      const old = sessions.get(req.key);
      sessions.set(req.key, session);
      if (old) await old.release();
      return {
        reply: { id: req.id, ok: true, op: 'load', inputs: info(session.inputMetadata), outputs: info(session.outputMetadata) },
        transfer: [],
      };
    }
    case 'run': {
      const session = sessions.get(req.key);
      if (!session) throw new Error(`no session ${req.key}`);
      const started = performance.now();
      const feeds = { [req.input]: new ort.Tensor('float32', req.data, [req.rows, req.length]) };
      const result = await session.run(feeds, [req.output]);
      const out = result[req.output];
      if (!out) throw new Error(`the model gave no output "${req.output}"`);
      if (out.type !== 'float32') throw new Error(`output "${req.output}" is ${out.type}, not float32`);
      const data = Float32Array.from(out.data as Float32Array);
      const runMs = performance.now() - started;
      return {
        reply: { id: req.id, ok: true, op: 'run', data, dims: out.dims.map(Number), runMs },
        transfer: [data.buffer],
      };
    }
    case 'release': {
      const session = sessions.get(req.key);
      sessions.delete(req.key);
      if (session) await session.release();
      return { reply: { id: req.id, ok: true, op: 'release' }, transfer: [] };
    }
  }
}

port.on('message', (req: WorkerRequest) => {
  handle(req).then(
    ({ reply, transfer }) => port.postMessage(reply, transfer),
    (err: unknown) =>
      port.postMessage({ id: req.id, ok: false, message: err instanceof Error ? err.message : String(err) } satisfies WorkerReply),
  );
});
