/** Minimal .npy (format 1.0) for float32 arrays: what numpy.save/numpy.load write and read. */

export function encodeNpyFloat32(data: Float32Array, shape: readonly number[]): Uint8Array {
  const dict = `{'descr': '<f4', 'fortran_order': False, 'shape': (${shape.join(', ')}${shape.length === 1 ? ',' : ''}), }`;
  // Header (magic 6 + version 2 + length 2 + dict + '\n') padded to a multiple of 64 bytes.
  const unpadded = 10 + dict.length + 1;
  const header = dict + ' '.repeat((64 - (unpadded % 64)) % 64) + '\n';
  const out = new Uint8Array(10 + header.length + data.byteLength);
  out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0], 0);
  new DataView(out.buffer).setUint16(8, header.length, true);
  out.set(Buffer.from(header, 'latin1'), 10);
  out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), 10 + header.length);
  return out;
}

/** Returns undefined when the bytes are not a little-endian float32, C-order .npy. */
export function decodeNpyFloat32(buf: Uint8Array): { data: Float32Array; shape: number[] } | undefined {
  if (buf.length < 10 || buf[0] !== 0x93 || String.fromCharCode(...buf.subarray(1, 6)) !== 'NUMPY') return undefined;
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const major = buf[6];
  const headerLen = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  const header = Buffer.from(buf.subarray(start, start + headerLen)).toString('latin1');
  if (!/'descr':\s*'<f4'/.test(header) || /'fortran_order':\s*True/.test(header)) return undefined;
  const m = /'shape':\s*\(([^)]*)\)/.exec(header);
  if (!m) return undefined;
  const shape = m[1].split(',').map((s) => s.trim()).filter((s) => s !== '').map(Number);
  const count = shape.reduce((a, b) => a * b, 1);
  const offset = start + headerLen;
  if (buf.length - offset < count * 4) return undefined;
  const data = new Float32Array(count);
  new Uint8Array(data.buffer).set(buf.subarray(offset, offset + count * 4));
  return { data, shape };
}
