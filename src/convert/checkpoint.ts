/**
 * Reads model weights without Python: PyTorch checkpoints (the torch.save zip format, and the
 * legacy pre-1.6 pickle stream) through a safe unpickler that only understands plain state_dicts,
 * and .safetensors files.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { endianness } from 'node:os';
import { inputError, SamError } from '../util/errors.js';
import { PickleError, PyObject, unpickle, type PyDict, type PyValue, type UnpickleHooks } from './pickle.js';
import { readFully, ZipReader } from './zip.js';

export type StateDict = Map<string, CheckpointTensor>;

export interface CheckpointTensor {
  /** The torch dtype name as stored: 'float32', 'float16', 'bfloat16', 'float64', 'int64', 'int32', 'uint8', 'bool', ... */
  dtype: string;
  shape: number[];
  /**
   * Contiguous row-major values. float16/bfloat16/float64 become Float32Array, int16/int8/uint16
   * Int32Array, bool Uint8Array. Tensors that are contiguous views of one storage share its
   * buffer: use byteOffset/byteLength, not the whole `data.buffer`.
   */
  data: Float32Array | BigInt64Array | Int32Array | Uint8Array;
}

type TensorData = CheckpointTensor['data'];

const RESAVE_FIX = 're-save it with a recent torch: torch.save(torch.load(path), path)';

/** Element sizes of the dtypes sam can turn into CheckpointTensor data. */
const ELEMENT_SIZE: Record<string, number> = {
  float32: 4, float16: 2, bfloat16: 2, float64: 8,
  int64: 8, int32: 4, int16: 2, int8: 1, uint16: 2, uint8: 1, bool: 1,
};

/** Sizes of dtypes that can be stored but not converted; needed to skip their bytes. */
const OTHER_ELEMENT_SIZE: Record<string, number> = {
  complex64: 8, complex128: 16, complex32: 4, uint32: 4, uint64: 8,
  qint8: 1, quint8: 1, qint32: 4, quint4x2: 1, quint2x4: 1,
  float8_e4m3fn: 1, float8_e5m2: 1, float8_e4m3fnuz: 1, float8_e5m2fnuz: 1,
};

const elementSize = (dtype: string): number => ELEMENT_SIZE[dtype] ?? OTHER_ELEMENT_SIZE[dtype] ?? 1;

/** torch.<X>Storage → dtype (torch/storage.py _get_dtype_from_pickle_storage_type). */
const STORAGE_DTYPE: Record<string, string> = {
  FloatStorage: 'float32', HalfStorage: 'float16', BFloat16Storage: 'bfloat16', DoubleStorage: 'float64',
  LongStorage: 'int64', IntStorage: 'int32', ShortStorage: 'int16', CharStorage: 'int8',
  ByteStorage: 'uint8', BoolStorage: 'bool',
  ComplexFloatStorage: 'complex64', ComplexDoubleStorage: 'complex128',
  QInt8Storage: 'qint8', QUInt8Storage: 'quint8', QInt32Storage: 'qint32',
  QUInt4x2Storage: 'quint4x2', QUInt2x4Storage: 'quint2x4',
};

/** torch.<name> dtype globals (how torch.dtype pickles) → canonical dtype name. */
const TORCH_DTYPE: Record<string, string> = {
  float32: 'float32', float: 'float32', float16: 'float16', half: 'float16', bfloat16: 'bfloat16',
  float64: 'float64', double: 'float64', int64: 'int64', long: 'int64', int32: 'int32', int: 'int32',
  int16: 'int16', short: 'int16', int8: 'int8', uint8: 'uint8', bool: 'bool', uint16: 'uint16',
  uint32: 'uint32', uint64: 'uint64', complex64: 'complex64', cfloat: 'complex64',
  complex128: 'complex128', cdouble: 'complex128', float8_e4m3fn: 'float8_e4m3fn', float8_e5m2: 'float8_e5m2',
};

/** safetensors dtype codes → torch dtype names. */
const SAFETENSORS_DTYPE: Record<string, string> = {
  F64: 'float64', F32: 'float32', F16: 'float16', BF16: 'bfloat16',
  I64: 'int64', I32: 'int32', I16: 'int16', I8: 'int8',
  U64: 'uint64', U32: 'uint32', U16: 'uint16', U8: 'uint8', BOOL: 'bool',
  F8_E4M3: 'float8_e4m3fn', F8_E5M2: 'float8_e5m2',
};

// ---------------------------------------------------------------------------------------------
// Values the torch hooks put on the unpickler's stack

/** An allowlisted global that may be called (REDUCE/NEWOBJ), named module.name. */
class AllowedGlobal extends PyObject {
  constructor(readonly qualname: string) { super(); }
}

class StorageType extends PyObject {
  /** 'uint8' for UntypedStorage, whose numel counts bytes. */
  constructor(readonly dtype: string) { super(); }
}

class DtypeRef extends PyObject {
  constructor(readonly dtype: string) { super(); }
}

class StorageRef extends PyObject {
  constructor(
    /** Root storage key: `data/<key>` in a zip, the storage's id in the legacy stream. */
    readonly key: string,
    readonly dtype: string,
    /** Elements of `dtype` in the root storage. */
    readonly numel: number,
    /** Legacy storage views: where this storage starts inside its root, in elements. */
    readonly viewOffset: number,
  ) { super(); }
}

class TensorRef extends PyObject {
  constructor(
    readonly storage: StorageRef,
    readonly dtype: string,
    readonly offset: number,
    readonly shape: number[],
    readonly stride: number[],
    /** torch's lazy negation bit (get_tensor_metadata): values are stored un-negated. */
    readonly neg: boolean,
  ) { super(); }
}

const ALLOWED_CALLABLES = new Set([
  'collections.OrderedDict',
  'torch._utils._rebuild_tensor',
  'torch._utils._rebuild_tensor_v2',
  'torch._utils._rebuild_tensor_v3',
  'torch._utils._rebuild_parameter',
  'torch._utils._rebuild_parameter_with_state',
  'torch._tensor._rebuild_from_type_v2',
  'torch.Size',
  'torch.device',
]);

/** Tensor classes that only appear as `new_type` of _rebuild_from_type_v2 (plain tensors and nn.Parameter). */
const TENSOR_TYPES = new Set(['torch.Tensor', 'torch._tensor.Tensor', 'torch.nn.parameter.Parameter', 'torch.nn.Parameter']);

function refusal(file: string, qualname: string): SamError {
  return inputError(
    `${file}: checkpoint contains a pickled object of type ${qualname}, which sam refuses to load ` +
      '(only plain state_dicts are supported); re-save it with torch.save(model.state_dict(), path)',
  );
}

function malformed(what: string): PickleError {
  return new PickleError(`malformed ${what}`);
}

function asInt(v: PyValue, what: string): number {
  if (typeof v === 'number' && Number.isInteger(v) && v >= 0) return v;
  throw malformed(what);
}

function asInts(v: PyValue, what: string): number[] {
  if (!Array.isArray(v)) throw malformed(what);
  return v.map((x) => asInt(x, what));
}

function isTruthyFlag(metadata: PyValue | undefined, flag: string): boolean {
  return metadata instanceof Map && metadata.get(flag) === true;
}

/**
 * Hooks that give a state_dict pickle its meaning. `storage` turns a persistent id into a
 * StorageRef; everything outside the allowlist is refused at the GLOBAL opcode, before any use.
 */
function torchHooks(file: string, storage: (pid: PyValue[]) => StorageRef): UnpickleHooks {
  const rebuild = (args: PyValue[], dtypeArg: PyValue | undefined, metadata: PyValue | undefined): TensorRef => {
    const [st, offset, size, stride] = args;
    if (!(st instanceof StorageRef)) throw malformed('tensor record (no storage)');
    const shape = asInts(size, 'tensor size');
    const strides = asInts(stride, 'tensor stride');
    if (strides.length !== shape.length) throw malformed('tensor stride');
    let dtype = st.dtype;
    if (dtypeArg !== undefined) {
      if (!(dtypeArg instanceof DtypeRef)) throw malformed('tensor dtype');
      dtype = dtypeArg.dtype;
    }
    return new TensorRef(st, dtype, asInt(offset, 'tensor storage offset'), shape, strides, isTruthyFlag(metadata, 'neg'));
  };

  const call = (fn: PyValue, args: PyValue[]): PyValue => {
    if (!(fn instanceof AllowedGlobal)) {
      throw new PickleError(`the pickle calls a ${fn instanceof PyObject ? fn.constructor.name : typeof fn} value, which is not callable here`);
    }
    switch (fn.qualname) {
      case 'collections.OrderedDict': {
        const d: PyDict = new Map();
        const items = args[0];
        if (Array.isArray(items)) {
          for (const pair of items) if (Array.isArray(pair) && pair.length === 2) d.set(pair[0], pair[1]);
        }
        return d;
      }
      case 'torch._utils._rebuild_tensor':
        return rebuild(args, undefined, undefined);
      case 'torch._utils._rebuild_tensor_v2':
        // (storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None)
        return rebuild(args, undefined, args[6]);
      case 'torch._utils._rebuild_tensor_v3':
        // (storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None)
        return rebuild(args, args[6], args[7]);
      case 'torch._utils._rebuild_parameter':
      case 'torch._utils._rebuild_parameter_with_state':
        if (!(args[0] instanceof TensorRef)) throw malformed('parameter record');
        return args[0];
      case 'torch._tensor._rebuild_from_type_v2': {
        // (func, new_type, args, state): the Python attributes in `state` are not weights.
        const [func, newType, inner] = args;
        if (!(newType instanceof AllowedGlobal) || !TENSOR_TYPES.has(newType.qualname)) throw malformed('tensor subclass record');
        if (!Array.isArray(inner)) throw malformed('tensor subclass record');
        return call(func, inner);
      }
      case 'torch.Size':
        return Array.isArray(args[0]) ? args[0] : [];
      case 'torch.device':
        return args.map(String).join(':');
      default:
        throw new PickleError(`${fn.qualname} cannot be called here`);
    }
  };

  return {
    findClass(module, name) {
      const qualname = `${module}.${name}`;
      if (ALLOWED_CALLABLES.has(qualname) || TENSOR_TYPES.has(qualname)) return new AllowedGlobal(qualname);
      // torch.load maps any *Storage name to its dtype; old CUDA checkpoints name torch.cuda.<X>Storage.
      if ((module === 'torch' || module === 'torch.cuda') && Object.hasOwn(STORAGE_DTYPE, name)) {
        return new StorageType(STORAGE_DTYPE[name]);
      }
      if ((module === 'torch' || module === 'torch.storage') && name === 'UntypedStorage') return new StorageType('uint8');
      if (module === 'torch' && Object.hasOwn(TORCH_DTYPE, name)) return new DtypeRef(TORCH_DTYPE[name]);
      throw refusal(file, qualname);
    },
    call,
    // BUILD restores Python attributes (OrderedDict._metadata, tensor __dict__): nothing sam needs.
    build: (obj) => obj,
    persistentLoad(pid) {
      if (!Array.isArray(pid) || pid[0] !== 'storage') throw malformed('persistent id (expected a storage)');
      return storage(pid);
    },
  };
}

/** For the legacy stream's small header pickles, which contain plain values only. */
function plainHooks(file: string): UnpickleHooks {
  return {
    findClass: (module, name) => { throw refusal(file, `${module}.${name}`); },
    call: () => { throw new PickleError('unexpected call'); },
    build: (obj) => obj,
    persistentLoad: () => { throw new PickleError('unexpected persistent id'); },
  };
}

// ---------------------------------------------------------------------------------------------
// Choosing the state dict

const hasTensor = (d: PyDict): boolean => {
  for (const v of d.values()) if (v instanceof TensorRef) return true;
  return false;
};

/** The dict itself when it holds tensors, else one found under a training checkpoint's usual keys. */
function findStateDict(root: PyValue, depth = 0): PyDict | undefined {
  if (!(root instanceof Map)) return undefined;
  if (hasTensor(root)) return root;
  if (depth >= 3) return undefined;
  for (const key of ['state_dict', 'model', 'model_state_dict']) {
    const found = findStateDict(root.get(key) ?? null, depth + 1);
    if (found) return found;
  }
  return undefined;
}

function selectTensors(file: string, root: PyValue): Map<string, TensorRef> {
  const dict = findStateDict(root);
  if (!dict) {
    throw inputError(
      `${file}: the checkpoint holds no tensors at its top level nor under 'model' or 'state_dict'; re-save it with torch.save(model.state_dict(), path)`,
    );
  }
  const out = new Map<string, TensorRef>();
  for (const [k, v] of dict) if (typeof k === 'string' && v instanceof TensorRef) out.set(k, v);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Bytes → typed arrays

let halfTable: Float32Array | undefined;

/** All 65536 float16 values as float32: widening becomes one table lookup per element. */
function halfToFloatTable(): Float32Array {
  if (halfTable) return halfTable;
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const mant = h & 0x3ff;
    if (exp === 0) t[h] = sign * mant * 2 ** -24;
    else if (exp === 31) t[h] = mant ? Number.NaN : sign * Infinity;
    else t[h] = sign * (1 + mant / 1024) * 2 ** (exp - 15);
  }
  halfTable = t;
  return t;
}

function byteswap(raw: Uint8Array, size: number): void {
  if (size === 1) return;
  for (let i = 0; i + size <= raw.length; i += size) {
    for (let a = i, b = i + size - 1; a < b; a++, b--) {
      const t = raw[a];
      raw[a] = raw[b];
      raw[b] = t;
    }
  }
}

// The widening loops live in small functions of their own so V8 optimizes each one as a tight
// monomorphic loop (inlined into decode's switch they ran about 4x slower).

function widenHalf(src: Uint16Array): Float32Array {
  const table = halfToFloatTable();
  const n = src.length;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = table[src[i]];
  return out;
}

/** bfloat16 is the top half of a float32. */
function widenBfloat16(src: Uint16Array): Float32Array {
  const n = src.length;
  const out = new Float32Array(n);
  const bits = new Uint32Array(out.buffer);
  for (let i = 0; i < n; i++) bits[i] = src[i] << 16;
  return out;
}

/**
 * Interprets little-endian bytes (in a buffer of their own, starting at offset 0) as `dtype`,
 * reusing the bytes where the dtype is kept as is.
 */
function decode(raw: Uint8Array, dtype: string): TensorData {
  const n = Math.floor(raw.byteLength / ELEMENT_SIZE[dtype]);
  const { buffer, byteOffset } = raw;
  switch (dtype) {
    case 'float32': return new Float32Array(buffer, byteOffset, n);
    case 'int64': return new BigInt64Array(buffer, byteOffset, n);
    case 'int32': return new Int32Array(buffer, byteOffset, n);
    case 'uint8':
    case 'bool': return raw.subarray(0, n);
    case 'float16': return widenHalf(new Uint16Array(buffer, byteOffset, n));
    case 'bfloat16': return widenBfloat16(new Uint16Array(buffer, byteOffset, n));
    case 'float64': { const out = new Float32Array(n); out.set(new Float64Array(buffer, byteOffset, n)); return out; }
    case 'int16': { const out = new Int32Array(n); out.set(new Int16Array(buffer, byteOffset, n)); return out; }
    case 'uint16': { const out = new Int32Array(n); out.set(new Uint16Array(buffer, byteOffset, n)); return out; }
    case 'int8': { const out = new Int32Array(n); out.set(new Int8Array(buffer, byteOffset, n)); return out; }
    default: throw new Error(`no decoder for ${dtype}`);
  }
}

function emptyLike(src: TensorData, n: number): TensorData {
  if (src instanceof Float32Array) return new Float32Array(n);
  if (src instanceof BigInt64Array) return new BigInt64Array(n);
  if (src instanceof Int32Array) return new Int32Array(n);
  return new Uint8Array(n);
}

interface Indexed<V> { [index: number]: V }

/** Copies a strided view into a fresh row-major array, innermost dimension in a tight loop. */
function gather<V>(src: Indexed<V>, dst: Indexed<V>, shape: number[], stride: number[], offset: number, numel: number): void {
  const nd = shape.length;
  if (nd === 0) { dst[0] = src[offset]; return; }
  const last = nd - 1;
  const inner = shape[last];
  const step = stride[last];
  const idx = new Array<number>(nd).fill(0);
  let base = offset;
  for (let o = 0; o < numel; ) {
    for (let j = 0, s = base; j < inner; j++, s += step) dst[o++] = src[s];
    for (let d = last - 1; d >= 0; d--) {
      idx[d]++;
      base += stride[d];
      if (idx[d] < shape[d]) break;
      base -= stride[d] * shape[d];
      idx[d] = 0;
    }
  }
}

function isContiguous(shape: number[], stride: number[]): boolean {
  let expected = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    if (shape[d] !== 1 && stride[d] !== expected) return false;
    expected *= shape[d];
  }
  return true;
}

const MAX_ELEMENTS = 2 ** 31;

function viewTensor(file: string, name: string, t: TensorRef, storage: TensorData): CheckpointTensor {
  const numel = t.shape.reduce((a, b) => a * b, 1);
  // Stride-0 (expanded) views may legitimately exceed their storage, but not this.
  if (numel > MAX_ELEMENTS) {
    throw inputError(`${file}: tensor ${name} claims ${numel} elements, more than sam can hold; the checkpoint is damaged or not a SAM model`);
  }
  const offset = t.offset + t.storage.viewOffset * (elementSize(t.storage.dtype) / elementSize(t.dtype));
  let data: TensorData;
  if (numel === 0) {
    data = emptyLike(storage, 0);
  } else {
    let last = offset;
    for (let d = 0; d < t.shape.length; d++) last += (t.shape[d] - 1) * t.stride[d];
    if (last >= storage.length) {
      throw inputError(`${file}: tensor ${name} reaches past the end of its storage; the checkpoint is damaged, download it again`);
    }
    if (isContiguous(t.shape, t.stride)) {
      data = storage.subarray(offset, offset + numel);
    } else if (storage instanceof BigInt64Array) {
      const out = new BigInt64Array(numel);
      gather<bigint>(storage, out, t.shape, t.stride, offset, numel);
      data = out;
    } else {
      const out = emptyLike(storage, numel) as Float32Array | Int32Array | Uint8Array;
      gather<number>(storage, out, t.shape, t.stride, offset, numel);
      data = out;
    }
  }
  if (t.neg) {
    // Negate a private copy: the storage may be shared with other tensors.
    if (data.buffer === storage.buffer) data = data.slice();
    if (data instanceof BigInt64Array) for (let i = 0; i < data.length; i++) data[i] = -data[i];
    else for (let i = 0; i < data.length; i++) data[i] = -data[i];
  }
  return { dtype: t.dtype, shape: t.shape, data };
}

function checkDtype(file: string, name: string, dtype: string): void {
  if (!Object.hasOwn(ELEMENT_SIZE, dtype)) {
    throw inputError(
      `${file}: tensor ${name} has dtype ${dtype}, which sam does not read; save the weights as float32 or float16`,
    );
  }
}

/** Runs `fn` over items with at most `limit` in flight; waits for all before reporting the first failure. */
async function forEachLimit<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) await fn(items[next++]);
  };
  const results = await Promise.allSettled(Array.from({ length: Math.min(limit, items.length) }, worker));
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}

/** A few positioned reads in flight keep the disk busy while the main thread widens finished ones. */
const READ_CONCURRENCY = 8;

/**
 * Reads the storages behind the selected tensors (each once, however many tensors view it) and
 * cuts the tensors out of them.
 */
async function materialize(
  file: string,
  tensors: Map<string, TensorRef>,
  readStorage: (st: StorageRef) => Promise<Uint8Array>,
  swap: boolean,
): Promise<StateDict> {
  const byKey = new Map<string, { ref: StorageRef; dtypes: Set<string> }>();
  for (const [name, t] of tensors) {
    checkDtype(file, name, t.dtype);
    const entry = byKey.get(t.storage.key);
    if (entry) entry.dtypes.add(t.dtype);
    else byKey.set(t.storage.key, { ref: t.storage, dtypes: new Set([t.dtype]) });
  }
  const decoded = new Map<string, TensorData>();
  await forEachLimit([...byKey.values()], READ_CONCURRENCY, async ({ ref, dtypes }) => {
    const raw = await readStorage(ref);
    for (const dtype of dtypes) {
      // Each dtype needs its own bytes when a swap or widening rewrites them.
      const bytes = dtypes.size > 1 ? raw.slice() : raw;
      const usable = bytes.subarray(0, bytes.length - (bytes.length % elementSize(dtype)));
      if (swap) byteswap(usable, elementSize(dtype));
      decoded.set(`${ref.key}\0${dtype}`, decode(usable, dtype));
    }
  });
  const out: StateDict = new Map();
  for (const [name, t] of tensors) {
    const storage = decoded.get(`${t.storage.key}\0${t.dtype}`) as TensorData;
    out.set(name, viewTensor(file, name, t, storage));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Formats

function pickleFailure(file: string, err: unknown): never {
  if (err instanceof PickleError) {
    if (err.truncated) throw inputError(`${file}: the file is truncated (its pickle ends early); download it again`, err);
    throw inputError(`${file}: cannot read the checkpoint (${err.message}); re-save it with torch.save(model.state_dict(), path)`, err);
  }
  throw err;
}

async function loadZip(fh: FileHandle, file: string, fileSize: number): Promise<StateDict> {
  const zip = await ZipReader.open(fh, file, fileSize);
  const pkls = [...zip.entries.keys()].filter((n) => /^[^/]+\/data\.pkl$/.test(n));
  if (pkls.length !== 1) {
    throw inputError(`${file}: a zip file, but not a torch.save checkpoint (no <archive>/data.pkl); pass a .pth/.pt file written by torch.save`);
  }
  const prefix = pkls[0].slice(0, -'data.pkl'.length);
  if (zip.entries.has(`${prefix}constants.pkl`)) {
    throw inputError(`${file}: a TorchScript archive (torch.jit.save), not a state_dict; re-save it with torch.save(model.state_dict(), path)`);
  }
  let swap = false;
  const order = zip.entries.get(`${prefix}byteorder`);
  if (order) {
    const text = Buffer.from(await zip.read(order)).toString('latin1').trim();
    if (text !== 'little' && text !== 'big') throw inputError(`${file}: unknown byteorder record '${text}'; re-save it with torch.save`);
    swap = text !== (endianness() === 'LE' ? 'little' : 'big');
  } else {
    // torch reads checkpoints without the record as little-endian.
    swap = endianness() !== 'LE';
  }

  const storages = new Map<string, StorageRef>();
  const hooks = torchHooks(file, (pid) => {
    // ('storage', storage_type, key, location, numel)
    const [, type, key, , numel] = pid;
    if (!(type instanceof StorageType) || typeof key !== 'string') throw malformed('storage persistent id');
    const n = asInt(numel, 'storage size');
    const existing = storages.get(key);
    if (existing) return existing;
    const ref = new StorageRef(key, type.dtype, n, 0);
    storages.set(key, ref);
    return ref;
  });
  const pklEntry = zip.entries.get(pkls[0]);
  if (!pklEntry) throw new Error('unreachable: data.pkl was just listed');
  const pkl = await zip.read(pklEntry);
  let root: PyValue;
  try {
    root = unpickle(pkl, hooks).value;
  } catch (err) {
    pickleFailure(file, err);
  }
  const tensors = selectTensors(file, root);
  return materialize(file, tensors, async (st) => {
    const name = `${prefix}data/${st.key}`;
    const entry = zip.entries.get(name);
    const nbytes = st.numel * elementSize(st.dtype);
    if (!entry) throw inputError(`${file}: storage ${name} is missing from the archive; download the checkpoint again`);
    if (entry.size < nbytes) {
      throw inputError(`${file}: storage ${name} has ${entry.size} bytes, expected ${nbytes}; download the checkpoint again`);
    }
    return zip.read(entry);
  }, swap);
}

const LEGACY_MAGIC = 0x1950a86a20f9469cfc6cn;
const LEGACY_PROTOCOL = 1001;

/** torch < 1.6: magic, protocol, sys_info, the object, its storage keys (all pickles), then each storage as int64 numel + bytes. */
async function loadLegacy(fh: FileHandle, file: string, fileSize: number): Promise<StateDict> {
  const storages = new Map<string, StorageRef>();
  const hooks = torchHooks(file, (pid) => {
    // ('storage', storage_type, root_key, location, numel, view_metadata)
    const [, type, key, , numel, view] = pid;
    if (!(type instanceof StorageType) || typeof key !== 'string') throw malformed('storage persistent id');
    let root = storages.get(key);
    if (!root) {
      root = new StorageRef(key, type.dtype, asInt(numel, 'storage size'), 0);
      storages.set(key, root);
    }
    if (view === null || view === undefined) return root;
    if (!Array.isArray(view)) throw malformed('storage view');
    return new StorageRef(key, root.dtype, root.numel, asInt(view[1], 'storage view offset'));
  });

  // The pickles come first and their length is unknown: parse a growing prefix of the file.
  let head = new Uint8Array(0);
  let chunk = 1 << 20;
  let parsed: { root: PyValue; keys: PyValue; end: number } | undefined;
  while (!parsed) {
    head = new Uint8Array(Math.min(chunk, fileSize));
    await readFully(fh, head, 0, file, 'the checkpoint header');
    storages.clear();
    try {
      const magic = unpickle(head, plainHooks(file));
      if (magic.value !== LEGACY_MAGIC && magic.value !== Number(LEGACY_MAGIC)) {
        throw inputError(`${file}: a pickle file, but not a PyTorch checkpoint (no torch magic number); pass a .pth/.pt file written by torch.save`);
      }
      const protocol = unpickle(head, plainHooks(file), magic.end);
      if (protocol.value !== LEGACY_PROTOCOL) throw inputError(`${file}: unsupported legacy torch protocol ${String(protocol.value)}; ${RESAVE_FIX}`);
      const sysInfo = unpickle(head, plainHooks(file), protocol.end);
      const main = unpickle(head, hooks, sysInfo.end);
      const keys = unpickle(head, plainHooks(file), main.end);
      parsed = { root: main.value, keys: keys.value, end: keys.end };
    } catch (err) {
      if (err instanceof PickleError && err.truncated && head.length < fileSize) {
        chunk *= 4;
        continue;
      }
      pickleFailure(file, err);
    }
  }
  const { root, keys, end } = parsed;
  if (!Array.isArray(keys)) throw inputError(`${file}: the legacy checkpoint has no storage list; ${RESAVE_FIX}`);

  // Storages follow in the listed order, each prefixed with its element count.
  const located = new Map<string, number>();
  let pos = end;
  const numelBytes = new Uint8Array(8);
  for (const key of keys) {
    const st = typeof key === 'string' ? storages.get(key) : undefined;
    if (!st) throw inputError(`${file}: the legacy checkpoint lists an unknown storage; ${RESAVE_FIX}`);
    await readFully(fh, numelBytes, pos, file, `storage ${st.key}`);
    const numel = Number(new DataView(numelBytes.buffer).getBigInt64(0, true));
    if (numel !== st.numel) throw inputError(`${file}: storage ${st.key} has ${numel} elements, expected ${st.numel}; the checkpoint is damaged`);
    located.set(st.key, pos + 8);
    pos += 8 + numel * elementSize(st.dtype);
  }
  if (pos > fileSize) throw inputError(`${file}: the file is truncated (its storages end at byte ${pos}, the file has ${fileSize}); download it again`);

  const tensors = selectTensors(file, root);
  return materialize(file, tensors, async (st) => {
    const at = located.get(st.key);
    if (at === undefined) throw inputError(`${file}: storage ${st.key} is missing; ${RESAVE_FIX}`);
    const raw = new Uint8Array(st.numel * elementSize(st.dtype));
    await readFully(fh, raw, at, file, `storage ${st.key}`);
    return raw;
  }, false); // legacy storages are always written little-endian
}

/** Largest header the safetensors reference implementation accepts. */
const SAFETENSORS_MAX_HEADER = 100_000_000;

async function loadSafetensors(fh: FileHandle, file: string, fileSize: number, headerLen: number): Promise<StateDict> {
  if (headerLen > SAFETENSORS_MAX_HEADER) throw inputError(`${file}: the safetensors header is implausibly large (${headerLen} bytes); the file is damaged`);
  if (8 + headerLen > fileSize) throw inputError(`${file}: the file is truncated (its safetensors header ends at byte ${8 + headerLen}, the file has ${fileSize}); download it again`);
  const headerBytes = new Uint8Array(headerLen);
  await readFully(fh, headerBytes, 8, file, 'the safetensors header');
  let header: unknown;
  try {
    header = JSON.parse(Buffer.from(headerBytes).toString('utf8'));
  } catch (err) {
    throw inputError(`${file}: the safetensors header is not valid JSON; the file is damaged, download it again`, err);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) {
    throw inputError(`${file}: the safetensors header is not a JSON object; the file is damaged, download it again`);
  }
  const base = 8 + headerLen;
  const jobs: { name: string; dtype: string; shape: number[]; begin: number; end: number }[] = [];
  for (const [name, info] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') continue;
    const bad = (why: string) => inputError(`${file}: safetensors entry ${name} ${why}; the file is damaged`);
    if (typeof info !== 'object' || info === null) throw bad('is not an object');
    const { dtype: code, shape, data_offsets: offsets } = info as Record<string, unknown>;
    const dtype = typeof code === 'string' ? SAFETENSORS_DTYPE[code] ?? code : '';
    if (!dtype) throw bad('has no dtype');
    checkDtype(file, name, dtype);
    const isDims = (v: unknown): v is number[] => Array.isArray(v) && v.every((x) => Number.isInteger(x) && x >= 0);
    if (!isDims(shape)) throw bad('has a malformed shape');
    if (!isDims(offsets) || offsets.length !== 2 || offsets[1] < offsets[0]) throw bad('has malformed data_offsets');
    const nbytes = shape.reduce((a, b) => a * b, 1) * ELEMENT_SIZE[dtype];
    if (offsets[1] - offsets[0] !== nbytes) throw bad(`has ${offsets[1] - offsets[0]} bytes for a ${dtype} tensor of shape [${shape.join(', ')}]`);
    if (base + offsets[1] > fileSize) {
      throw inputError(`${file}: the file is truncated (tensor ${name} ends at byte ${base + offsets[1]}, the file has ${fileSize}); download it again`);
    }
    jobs.push({ name, dtype, shape, begin: offsets[0], end: offsets[1] });
  }
  const results = new Map<string, CheckpointTensor>();
  await forEachLimit(jobs, READ_CONCURRENCY, async (job) => {
    const raw = new Uint8Array(job.end - job.begin);
    await readFully(fh, raw, base + job.begin, file, `tensor ${job.name}`);
    if (endianness() !== 'LE') byteswap(raw, ELEMENT_SIZE[job.dtype]);
    results.set(job.name, { dtype: job.dtype, shape: job.shape, data: decode(raw, job.dtype) });
  });
  // Keep the header's order regardless of which read finished first.
  const out: StateDict = new Map();
  for (const job of jobs) out.set(job.name, results.get(job.name) as CheckpointTensor);
  return out;
}

/**
 * Loads the tensors of a state_dict from a PyTorch checkpoint (.pth/.pt, zip or legacy) or a
 * .safetensors file. Training checkpoints holding the state_dict under 'model' or 'state_dict'
 * are unwrapped; entries that are not tensors are skipped.
 */
export async function loadStateDict(path: string): Promise<StateDict> {
  let fh: FileHandle;
  try {
    fh = await open(path, 'r');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw inputError(`${path}: no such file; check the checkpoint path`, err);
    throw inputError(`${path}: cannot open the checkpoint (${(err as Error).message}); check the path and its permissions`, err);
  }
  try {
    const stat = await fh.stat();
    if (stat.isDirectory()) throw inputError(`${path}: is a directory; pass the checkpoint file itself`);
    const size = stat.size;
    if (size === 0) throw inputError(`${path}: the file is empty; download the checkpoint again`);
    const head = new Uint8Array(Math.min(size, 512));
    await readFully(fh, head, 0, path, 'the file header');
    const hv = new DataView(head.buffer);

    if (head.length >= 4 && hv.getUint32(0, true) === 0x04034b50) return await loadZip(fh, path, size);
    if (head.length >= 9 && head[8] === 0x7b /* '{' */) {
      const headerLen = hv.getBigUint64(0, true);
      if (headerLen <= BigInt(Number.MAX_SAFE_INTEGER)) return await loadSafetensors(fh, path, size, Number(headerLen));
    }
    if (head[0] === 0x80 && head.length >= 2 && head[1] <= 5) return await loadLegacy(fh, path, size);
    if (head.length >= 262 && Buffer.from(head.subarray(257, 262)).toString('latin1') === 'ustar') {
      throw inputError(`${path}: uses the pre-1.0 tar checkpoint format, which sam does not read; ${RESAVE_FIX}`);
    }
    throw inputError(`${path}: not a PyTorch checkpoint (.pth/.pt written by torch.save) or a .safetensors file; pass the downloaded model weights`);
  } finally {
    await fh.close();
  }
}
