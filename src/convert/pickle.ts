/**
 * A minimal, safe unpickler (protocols 0-5). It never imports or calls anything: every global
 * reference, call (REDUCE/NEWOBJ/INST/OBJ), attribute restore (BUILD) and persistent id is handed
 * to the caller's hooks, which decide what a value means or refuse it.
 *
 * Layout: `PickleReader` reads bounds-checked operands, `Unpickler` holds the stack machine
 * (stack, MARK metastack, memo), and one handler table per opcode group says what each opcode
 * does; `unpickle` runs the table until STOP.
 */

/** Opaque values created by the hooks (globals, tensors, storages). */
export class PyObject {}

export type PyDict = Map<PyValue, PyValue>;
/** Tuples, lists, sets and frozensets all become arrays: a state_dict does not need the difference. */
export type PyValue = null | boolean | number | bigint | string | Uint8Array | PyValue[] | PyDict | PyObject;

export interface UnpickleHooks {
  /** GLOBAL / STACK_GLOBAL / INST / OBJ: resolve a module attribute, or throw to refuse it. */
  findClass(module: string, name: string): PyValue;
  /** REDUCE, NEWOBJ, INST, OBJ: `callable(*args)`. */
  call(callable: PyValue, args: PyValue[]): PyValue;
  /** BUILD: restore `state` onto `obj`; returns the object that stays on the stack. */
  build(obj: PyValue, state: PyValue): PyValue;
  persistentLoad(pid: PyValue): PyValue;
}

/** Raised for malformed or unsupported pickle bytes; the caller adds the file name. */
export class PickleError extends Error {
  readonly truncated: boolean;
  constructor(message: string, truncated = false) {
    super(message);
    this.name = 'PickleError';
    this.truncated = truncated;
  }
}

export interface UnpickleResult {
  value: PyValue;
  /** Offset just past the STOP opcode (several pickles may follow each other). */
  end: number;
}

/** Opcodes by their names in CPython's Lib/pickle.py. */
const OP = {
  // protocol 0 and 1
  MARK: 0x28, STOP: 0x2e, POP: 0x30, POP_MARK: 0x31, DUP: 0x32, FLOAT: 0x46, INT: 0x49, BININT: 0x4a,
  BININT1: 0x4b, LONG: 0x4c, BININT2: 0x4d, NONE: 0x4e, PERSID: 0x50, BINPERSID: 0x51, REDUCE: 0x52,
  STRING: 0x53, BINSTRING: 0x54, SHORT_BINSTRING: 0x55, UNICODE: 0x56, BINUNICODE: 0x58, APPEND: 0x61,
  BUILD: 0x62, GLOBAL: 0x63, DICT: 0x64, EMPTY_DICT: 0x7d, APPENDS: 0x65, GET: 0x67, BINGET: 0x68,
  INST: 0x69, LONG_BINGET: 0x6a, LIST: 0x6c, EMPTY_LIST: 0x5d, OBJ: 0x6f, PUT: 0x70, BINPUT: 0x71,
  LONG_BINPUT: 0x72, SETITEM: 0x73, TUPLE: 0x74, EMPTY_TUPLE: 0x29, SETITEMS: 0x75, BINFLOAT: 0x47,
  // protocol 2
  PROTO: 0x80, NEWOBJ: 0x81, EXT1: 0x82, EXT2: 0x83, EXT4: 0x84, TUPLE1: 0x85, TUPLE2: 0x86,
  TUPLE3: 0x87, NEWTRUE: 0x88, NEWFALSE: 0x89, LONG1: 0x8a, LONG4: 0x8b,
  // protocol 3
  BINBYTES: 0x42, SHORT_BINBYTES: 0x43,
  // protocol 4
  SHORT_BINUNICODE: 0x8c, BINUNICODE8: 0x8d, BINBYTES8: 0x8e, EMPTY_SET: 0x8f, ADDITEMS: 0x90,
  FROZENSET: 0x91, NEWOBJ_EX: 0x92, STACK_GLOBAL: 0x93, MEMOIZE: 0x94, FRAME: 0x95,
  // protocol 5
  BYTEARRAY8: 0x96, NEXT_BUFFER: 0x97, READONLY_BUFFER: 0x98,
} as const;

const truncated = (): PickleError => new PickleError('pickle data is truncated', true);
const utf8 = new TextDecoder('utf-8');

/** The pickle bytes and a read position; every read checks that its operand is all there. */
class PickleReader {
  private readonly view: DataView;

  constructor(
    private readonly bytes: Uint8Array,
    public pos: number,
  ) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  private need(n: number): void {
    if (this.pos + n > this.bytes.length) throw truncated();
  }

  /** A view into the pickle bytes (not a copy). */
  take(n: number): Uint8Array {
    this.need(n);
    const out = this.bytes.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  u8(): number {
    this.need(1);
    return this.bytes[this.pos++];
  }

  u16(): number {
    this.need(2);
    const v = this.view.getUint16(this.pos, true);
    this.pos += 2;
    return v;
  }

  u32(): number {
    this.need(4);
    const v = this.view.getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }

  i32(): number {
    this.need(4);
    const v = this.view.getInt32(this.pos, true);
    this.pos += 4;
    return v;
  }

  /** An 8-byte length; one longer than the whole pickle can only mean truncated data. */
  u64(): number {
    this.need(8);
    const v = this.view.getBigUint64(this.pos, true);
    this.pos += 8;
    if (v > BigInt(this.bytes.length)) throw truncated();
    return Number(v);
  }

  /** BINFLOAT's operand is big-endian, unlike every other binary operand. */
  f64be(): number {
    this.need(8);
    const v = this.view.getFloat64(this.pos, false);
    this.pos += 8;
    return v;
  }

  /** A protocol-0 text operand up to (not including) the next newline, as latin1. */
  line(): string {
    const nl = this.bytes.indexOf(0x0a, this.pos);
    if (nl < 0) throw truncated();
    const s = Buffer.from(this.bytes.buffer, this.bytes.byteOffset + this.pos, nl - this.pos).toString('latin1');
    this.pos = nl + 1;
    return s;
  }
}

/** The pickle machine: the stack, the stacks that MARK set aside, and the memo. */
class Unpickler {
  private stack: PyValue[] = [];
  private readonly metastack: PyValue[][] = [];
  private readonly memo = new Map<number, PyValue>();

  constructor(
    readonly r: PickleReader,
    readonly hooks: UnpickleHooks,
  ) {}

  push(v: PyValue): void {
    this.stack.push(v);
  }

  pop(): PyValue {
    if (this.stack.length === 0) throw this.underflow();
    return this.stack.pop() as PyValue;
  }

  top(): PyValue {
    if (this.stack.length === 0) throw this.underflow();
    return this.stack[this.stack.length - 1];
  }

  /** The opcode being run is the byte before the operands read so far. */
  private underflow(): PickleError {
    return new PickleError(`pickle stack underflow at byte ${this.r.pos - 1}`);
  }

  mark(): void {
    this.metastack.push(this.stack);
    this.stack = [];
  }

  /**
   * The items since the last MARK; the stack before that MARK becomes current again. `push`
   * reads the stack when it runs, so `u.push(u.popMark())` lands on the restored stack.
   */
  popMark(): PyValue[] {
    const items = this.stack;
    const prev = this.metastack.pop();
    if (prev === undefined) throw new PickleError('pickle MARK missing');
    this.stack = prev;
    return items;
  }

  memoPut(key: number, value: PyValue): void {
    this.memo.set(key, value);
  }

  /** MEMOIZE's key: the next index. */
  memoSize(): number {
    return this.memo.size;
  }

  memoGet(key: number): PyValue {
    if (!this.memo.has(key)) throw new PickleError(`pickle memo key ${key} missing`);
    return this.memo.get(key) as PyValue;
  }
}

// ---------------------------------------------------------------------------------------------
// Value helpers.

function asList(v: PyValue, op: string): PyValue[] {
  if (!Array.isArray(v)) throw new PickleError(`pickle ${op} on a non-list`);
  return v;
}

function asDict(v: PyValue, op: string): PyDict {
  if (!(v instanceof Map)) throw new PickleError(`pickle ${op} on a non-dict`);
  return v;
}

/** `items` alternate key, value. */
function setItems(dict: PyDict, items: PyValue[]): void {
  if (items.length % 2 !== 0) throw new PickleError('pickle SETITEMS with an odd item count');
  for (let i = 0; i < items.length; i += 2) dict.set(items[i], items[i + 1]);
}

/** Python ints: numbers when exact, bigints beyond 2^53. */
function exactInt(v: bigint): number | bigint {
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}

/** LONG1/LONG4 operand: little-endian two's complement of any length. */
function fromLong(b: Uint8Array): number | bigint {
  if (b.length === 0) return 0;
  let v = 0n;
  for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]);
  if (b[b.length - 1] & 0x80) v -= 1n << BigInt(8 * b.length);
  return exactInt(v);
}

/** INT/LONG/PUT/GET text operand: decimal, Python 2 longs with a trailing L. */
function textInt(s: string): number | bigint {
  const t = s.endsWith('L') ? s.slice(0, -1) : s;
  if (!/^[+-]?\d+$/.test(t)) throw new PickleError(`pickle INT has a malformed value ${JSON.stringify(s)}`);
  return exactInt(BigInt(t));
}

/** Bytes values outlive the pickle buffer: copy them out of it. */
const copy = (b: Uint8Array): Uint8Array => new Uint8Array(b);

/** raw-unicode-escape: only \uXXXX and \UXXXXXXXX are escapes. */
function rawUnicodeEscape(s: string): string {
  return s.replace(/\\u([0-9a-fA-F]{4})|\\U([0-9a-fA-F]{8})/g, (_m, a: string | undefined, b: string | undefined) =>
    String.fromCodePoint(Number.parseInt(a ?? b ?? '0', 16)));
}

/** STRING (quoted repr): only the escape-free form, which torch never needs anyway. */
function quotedString(s: string): string {
  const q = s[0];
  if ((q !== "'" && q !== '"') || s[s.length - 1] !== q || s.includes('\\')) {
    throw new PickleError('pickle STRING with escapes is not supported');
  }
  return s.slice(1, -1);
}

// ---------------------------------------------------------------------------------------------
// Opcode handlers, one table per group. STOP is not here: it ends the loop in `unpickle`.

type Handler = (u: Unpickler) => void;
type OpGroup = Partial<Record<keyof typeof OP, Handler>>;

const FRAMING_OPS: OpGroup = {
  PROTO: (u) => {
    if (u.r.u8() > 5) throw new PickleError('pickle protocol newer than 5');
  },
  // Framing is only a read-ahead hint.
  FRAME: (u) => void u.r.take(8),
};

const STACK_OPS: OpGroup = {
  MARK: (u) => u.mark(),
  POP: (u) => void u.pop(),
  POP_MARK: (u) => void u.popMark(),
  DUP: (u) => u.push(u.top()),
};

const NUMBER_OPS: OpGroup = {
  NONE: (u) => u.push(null),
  NEWTRUE: (u) => u.push(true),
  NEWFALSE: (u) => u.push(false),
  BININT: (u) => u.push(u.r.i32()),
  BININT1: (u) => u.push(u.r.u8()),
  BININT2: (u) => u.push(u.r.u16()),
  LONG1: (u) => u.push(fromLong(u.r.take(u.r.u8()))),
  LONG4: (u) => {
    const n = u.r.i32();
    if (n < 0) throw new PickleError('pickle LONG4 with a negative length');
    u.push(fromLong(u.r.take(n)));
  },
  // Protocol 0 writes the booleans as INT "00" and "01".
  INT: (u) => {
    const s = u.r.line();
    u.push(s === '00' ? false : s === '01' ? true : textInt(s));
  },
  LONG: (u) => u.push(textInt(u.r.line())),
  BINFLOAT: (u) => u.push(u.r.f64be()),
  FLOAT: (u) => u.push(Number.parseFloat(u.r.line())),
};

const STRING_OPS: OpGroup = {
  BINUNICODE: (u) => u.push(utf8.decode(u.r.take(u.r.u32()))),
  SHORT_BINUNICODE: (u) => u.push(utf8.decode(u.r.take(u.r.u8()))),
  BINUNICODE8: (u) => u.push(utf8.decode(u.r.take(u.r.u64()))),
  // Python 2 str: torch.load decodes these with encoding='utf-8'.
  BINSTRING: (u) => u.push(utf8.decode(u.r.take(u.r.i32()))),
  SHORT_BINSTRING: (u) => u.push(utf8.decode(u.r.take(u.r.u8()))),
  UNICODE: (u) => u.push(rawUnicodeEscape(u.r.line())),
  STRING: (u) => u.push(quotedString(u.r.line())),
  BINBYTES: (u) => u.push(copy(u.r.take(u.r.u32()))),
  SHORT_BINBYTES: (u) => u.push(copy(u.r.take(u.r.u8()))),
  BINBYTES8: (u) => u.push(copy(u.r.take(u.r.u64()))),
  BYTEARRAY8: (u) => u.push(copy(u.r.take(u.r.u64()))),
};

const CONTAINER_OPS: OpGroup = {
  EMPTY_TUPLE: (u) => u.push([]),
  TUPLE1: (u) => u.push([u.pop()]),
  TUPLE2: (u) => {
    const b = u.pop();
    const a = u.pop();
    u.push([a, b]);
  },
  TUPLE3: (u) => {
    const c = u.pop();
    const b = u.pop();
    const a = u.pop();
    u.push([a, b, c]);
  },
  TUPLE: (u) => u.push(u.popMark()),
  EMPTY_LIST: (u) => u.push([]),
  LIST: (u) => u.push(u.popMark()),
  APPEND: (u) => {
    const v = u.pop();
    asList(u.top(), 'APPEND').push(v);
  },
  APPENDS: (u) => {
    const items = u.popMark();
    const l = asList(u.top(), 'APPENDS');
    for (const v of items) l.push(v);
  },
  EMPTY_SET: (u) => u.push([]),
  ADDITEMS: (u) => {
    const items = u.popMark();
    const s = asList(u.top(), 'ADDITEMS');
    for (const v of items) s.push(v);
  },
  FROZENSET: (u) => u.push(u.popMark()),
  EMPTY_DICT: (u) => u.push(new Map()),
  DICT: (u) => {
    const d: PyDict = new Map();
    setItems(d, u.popMark());
    u.push(d);
  },
  SETITEM: (u) => {
    const v = u.pop();
    const k = u.pop();
    asDict(u.top(), 'SETITEM').set(k, v);
  },
  SETITEMS: (u) => {
    const items = u.popMark();
    setItems(asDict(u.top(), 'SETITEMS'), items);
  },
};

// The operand is read before the stack is looked at, as CPython's load_binput does.
const MEMO_OPS: OpGroup = {
  BINPUT: (u) => u.memoPut(u.r.u8(), u.top()),
  LONG_BINPUT: (u) => u.memoPut(u.r.u32(), u.top()),
  MEMOIZE: (u) => u.memoPut(u.memoSize(), u.top()),
  PUT: (u) => u.memoPut(Number(textInt(u.r.line())), u.top()),
  BINGET: (u) => u.push(u.memoGet(u.r.u8())),
  LONG_BINGET: (u) => u.push(u.memoGet(u.r.u32())),
  GET: (u) => u.push(u.memoGet(Number(textInt(u.r.line())))),
};

/** Everything that resolves or calls Python objects goes through the hooks. */
const OBJECT_OPS: OpGroup = {
  GLOBAL: (u) => {
    const module = u.r.line();
    const name = u.r.line();
    u.push(u.hooks.findClass(module, name));
  },
  STACK_GLOBAL: (u) => {
    const name = u.pop();
    const module = u.pop();
    if (typeof module !== 'string' || typeof name !== 'string') throw new PickleError('pickle STACK_GLOBAL needs two strings');
    u.push(u.hooks.findClass(module, name));
  },
  REDUCE: (u) => {
    const args = u.pop();
    const fn = u.pop();
    u.push(u.hooks.call(fn, asList(args, 'REDUCE')));
  },
  // cls.__new__(cls, *args)
  NEWOBJ: (u) => {
    const args = u.pop();
    const cls = u.pop();
    u.push(u.hooks.call(cls, asList(args, 'NEWOBJ')));
  },
  // Keyword arguments are not part of any state_dict.
  NEWOBJ_EX: (u) => {
    const kwargs = u.pop();
    const args = u.pop();
    const cls = u.pop();
    if (!(kwargs instanceof Map) || kwargs.size > 0) throw new PickleError('pickle NEWOBJ_EX with keyword arguments is not supported');
    u.push(u.hooks.call(cls, asList(args, 'NEWOBJ_EX')));
  },
  INST: (u) => {
    const module = u.r.line();
    const name = u.r.line();
    const cls = u.hooks.findClass(module, name);
    const args = u.popMark();
    u.push(u.hooks.call(cls, args));
  },
  OBJ: (u) => {
    const items = u.popMark();
    if (items.length === 0) throw new PickleError('pickle OBJ without a class');
    u.push(u.hooks.call(items[0], items.slice(1)));
  },
  BUILD: (u) => {
    const state = u.pop();
    const obj = u.pop();
    u.push(u.hooks.build(obj, state));
  },
  BINPERSID: (u) => u.push(u.hooks.persistentLoad(u.pop())),
  PERSID: (u) => u.push(u.hooks.persistentLoad(u.r.line())),
};

const refuse = (message: string): Handler => () => {
  throw new PickleError(message);
};

const UNSUPPORTED_OPS: OpGroup = {
  EXT1: refuse('pickle uses the copyreg extension registry, which is not supported'),
  EXT2: refuse('pickle uses the copyreg extension registry, which is not supported'),
  EXT4: refuse('pickle uses the copyreg extension registry, which is not supported'),
  NEXT_BUFFER: refuse('pickle uses out-of-band buffers, which are not supported'),
  READONLY_BUFFER: refuse('pickle uses out-of-band buffers, which are not supported'),
};

/** Handler by opcode byte; undefined for unknown opcodes (and STOP). */
const DISPATCH: (Handler | undefined)[] = new Array<Handler | undefined>(256);
for (const group of [FRAMING_OPS, STACK_OPS, NUMBER_OPS, STRING_OPS, CONTAINER_OPS, MEMO_OPS, OBJECT_OPS, UNSUPPORTED_OPS]) {
  for (const [name, handler] of Object.entries(group)) DISPATCH[OP[name as keyof typeof OP]] = handler;
}

export function unpickle(bytes: Uint8Array, hooks: UnpickleHooks, start = 0): UnpickleResult {
  const u = new Unpickler(new PickleReader(bytes, start), hooks);
  for (;;) {
    const op = u.r.u8();
    if (op === OP.STOP) return { value: u.pop(), end: u.r.pos };
    const handler = DISPATCH[op];
    if (handler === undefined) throw new PickleError(`unknown pickle opcode 0x${op.toString(16).padStart(2, '0')} at byte ${u.r.pos - 1}`);
    handler(u);
  }
}
