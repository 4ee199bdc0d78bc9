/**
 * A small writer of ONNX models (opset 17, IR version 8) on top of onnx-proto's generated protobuf
 * code.
 *
 * The bytes must be the same on every run and machine, because `npm run train` has to reproduce
 * the committed model file: nodes and initializers are kept in the order they are added, attributes
 * are sorted by name, weights go into `raw_data` as little-endian float32 (ONNX's byte order,
 * written explicitly so a big-endian host gives the same file), and no date, host or tool version
 * ends up in the file. protobufjs's encoder writes fields in schema order and skips unset ones.
 */
import onnxProto from 'onnx-proto';
import type { onnx as OnnxTypes } from 'onnx-proto';

const { onnx } = onnxProto;

/** Opset 17 with IR 8 is a valid pair (ONNX 1.12) and the newest IR that onnx-proto knows. */
export const OPSET = 17;
export const IR_VERSION = 8;

/** A tensor dimension: a fixed size, or a name for a dynamic one (e.g. "batch"). */
export type Dim = number | string;
export type AttrValue = number | readonly number[] | string;

export interface GraphIo {
  name: string;
  dims: readonly Dim[];
}

function littleEndianBytes(values: ArrayLike<number>, kind: 'float32' | 'int64'): Uint8Array {
  const size = kind === 'float32' ? 4 : 8;
  const out = new Uint8Array(values.length * size);
  const view = new DataView(out.buffer);
  for (let i = 0; i < values.length; i++) {
    const v = values[i]!;
    if (kind === 'float32') view.setFloat32(i * size, v, true);
    else view.setBigInt64(i * size, BigInt(v), true);
  }
  return out;
}

export class GraphBuilder {
  private readonly nodes: OnnxTypes.INodeProto[] = [];
  private readonly initializers: OnnxTypes.ITensorProto[] = [];
  private readonly names = new Set<string>();
  private counter = 0;

  private claim(name: string): string {
    if (this.names.has(name)) throw new Error(`onnx graph: name "${name}" used twice`);
    this.names.add(name);
    return name;
  }

  /** A float32 initializer; values are rounded to float32 here, once. */
  floats(name: string, dims: readonly number[], values: ArrayLike<number>): string {
    return this.initializer(name, dims, values, 'float32');
  }

  /** An int64 initializer (axes, slice bounds). */
  ints(name: string, dims: readonly number[], values: ArrayLike<number>): string {
    return this.initializer(name, dims, values, 'int64');
  }

  private initializer(name: string, dims: readonly number[], values: ArrayLike<number>, kind: 'float32' | 'int64'): string {
    const count = dims.reduce((a, b) => a * b, 1);
    if (count !== values.length) throw new RangeError(`onnx graph: ${name} has ${values.length} values for dims [${dims.join(',')}]`);
    this.initializers.push(
      onnx.TensorProto.create({
        name: this.claim(name),
        dims: [...dims],
        dataType: kind === 'float32' ? onnx.TensorProto.DataType.FLOAT : onnx.TensorProto.DataType.INT64,
        rawData: littleEndianBytes(values, kind),
      }),
    );
    return name;
  }

  /** Adds a node with one output and returns the output's name (`name`, or `<op>_<n>`). */
  op(opType: string, inputs: readonly string[], attrs: Readonly<Record<string, AttrValue>> = {}, name?: string): string {
    const out = this.claim(name ?? `${opType.toLowerCase()}_${this.counter++}`);
    const A = onnx.AttributeProto.AttributeType;
    const attribute = Object.keys(attrs)
      .sort()
      .map((key) => {
        const v = attrs[key]!;
        if (typeof v === 'string') return onnx.AttributeProto.create({ name: key, type: A.STRING, s: new TextEncoder().encode(v) });
        if (typeof v !== 'number') return onnx.AttributeProto.create({ name: key, type: A.INTS, ints: [...v] });
        if (Number.isInteger(v)) return onnx.AttributeProto.create({ name: key, type: A.INT, i: v });
        return onnx.AttributeProto.create({ name: key, type: A.FLOAT, f: v });
      });
    this.nodes.push(onnx.NodeProto.create({ opType, input: [...inputs], output: [out], name: out, attribute }));
    return out;
  }

  /** The serialized model; inputs and outputs are float32 tensors. */
  encode(opts: { name: string; docString: string; inputs: readonly GraphIo[]; outputs: readonly GraphIo[] }): Uint8Array {
    const valueInfo = ({ name, dims }: GraphIo): OnnxTypes.IValueInfoProto =>
      onnx.ValueInfoProto.create({
        name,
        type: {
          tensorType: {
            elemType: onnx.TensorProto.DataType.FLOAT,
            shape: { dim: dims.map((d) => (typeof d === 'string' ? { dimParam: d } : { dimValue: d })) },
          },
        },
      });
    const model = onnx.ModelProto.create({
      irVersion: IR_VERSION,
      producerName: 'edge-proxy-train',
      producerVersion: '1',
      docString: opts.docString,
      opsetImport: [{ domain: '', version: OPSET }],
      graph: {
        name: opts.name,
        node: this.nodes,
        initializer: this.initializers,
        input: opts.inputs.map(valueInfo),
        output: opts.outputs.map(valueInfo),
      },
    });
    return onnx.ModelProto.encode(model).finish();
  }
}
