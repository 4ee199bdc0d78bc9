// The messages between the main thread and the inference worker (worker.ts). Plain data, structured-
// cloned; tensors travel as transferred Float32Arrays, so a batch is never copied on the way.

/** What ONNX Runtime says about one input or output of a model. */
export interface TensorInfo {
  name: string;
  /** float32, int64, ...; null when it is not a tensor */
  type: string | null;
  /** numbers for fixed dimensions, text for symbolic ones ("batch"), "" for unnamed dynamic ones; [] when unknown */
  shape: ReadonlyArray<number | string>;
}

export type WorkerRequest =
  | { id: number; op: 'load'; key: string; bytes: Uint8Array; threads: number }
  | { id: number; op: 'run'; key: string; input: string; output: string; data: Float32Array; rows: number; length: number }
  | { id: number; op: 'release'; key: string };

export type WorkerReply =
  | { id: number; ok: true; op: 'load'; inputs: TensorInfo[]; outputs: TensorInfo[] }
  | { id: number; ok: true; op: 'run'; data: Float32Array; dims: number[]; runMs: number }
  | { id: number; ok: true; op: 'release' }
  | { id: number; ok: false; message: string };
