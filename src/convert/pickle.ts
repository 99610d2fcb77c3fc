/**
 * A minimal, safe unpickler (protocols 0-5). It never imports or calls anything: every global
 * reference, call (REDUCE/NEWOBJ/INST/OBJ), attribute restore (BUILD) and persistent id is handed
 * to the caller's hooks, which decide what a value means or refuse it.
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

const utf8 = new TextDecoder('utf-8');

export interface UnpickleResult {
  value: PyValue;
  /** Offset just past the STOP opcode (several pickles may follow each other). */
  end: number;
}

export function unpickle(bytes: Uint8Array, hooks: UnpickleHooks, start = 0): UnpickleResult {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let pos = start;
  let stack: PyValue[] = [];
  const metastack: PyValue[][] = [];
  const memo = new Map<number, PyValue>();

  const need = (n: number): void => {
    if (pos + n > bytes.length) throw new PickleError('pickle data is truncated', true);
  };
  const take = (n: number): Uint8Array => {
    need(n);
    const out = bytes.subarray(pos, pos + n);
    pos += n;
    return out;
  };
  const u8 = (): number => { need(1); return bytes[pos++]; };
  const u16 = (): number => { need(2); const v = view.getUint16(pos, true); pos += 2; return v; };
  const u32 = (): number => { need(4); const v = view.getUint32(pos, true); pos += 4; return v; };
  const i32 = (): number => { need(4); const v = view.getInt32(pos, true); pos += 4; return v; };
  const u64 = (): number => {
    need(8);
    const v = view.getBigUint64(pos, true);
    pos += 8;
    if (v > BigInt(bytes.length)) throw new PickleError('pickle data is truncated', true);
    return Number(v);
  };
  const line = (): string => {
    const nl = bytes.indexOf(0x0a, pos);
    if (nl < 0) throw new PickleError('pickle data is truncated', true);
    const s = Buffer.from(bytes.buffer, bytes.byteOffset + pos, nl - pos).toString('latin1');
    pos = nl + 1;
    return s;
  };
  const pop = (): PyValue => {
    if (stack.length === 0) throw new PickleError(`pickle stack underflow at byte ${pos - 1}`);
    return stack.pop() as PyValue;
  };
  const top = (): PyValue => {
    if (stack.length === 0) throw new PickleError(`pickle stack underflow at byte ${pos - 1}`);
    return stack[stack.length - 1];
  };
  // Callers must take the result before touching `stack`, which this replaces
  // (`stack.push(popMark())` would push onto the discarded inner stack).
  const popMark = (): PyValue[] => {
    const items = stack;
    const prev = metastack.pop();
    if (prev === undefined) throw new PickleError('pickle MARK missing');
    stack = prev;
    return items;
  };
  const memoGet = (i: number): PyValue => {
    if (!memo.has(i)) throw new PickleError(`pickle memo key ${i} missing`);
    return memo.get(i) as PyValue;
  };
  const asList = (v: PyValue, op: string): PyValue[] => {
    if (!Array.isArray(v)) throw new PickleError(`pickle ${op} on a non-list`);
    return v;
  };
  const asDict = (v: PyValue, op: string): PyDict => {
    if (!(v instanceof Map)) throw new PickleError(`pickle ${op} on a non-dict`);
    return v;
  };
  const setItems = (dict: PyDict, items: PyValue[]): void => {
    if (items.length % 2 !== 0) throw new PickleError('pickle SETITEMS with an odd item count');
    for (let i = 0; i < items.length; i += 2) dict.set(items[i], items[i + 1]);
  };
  /** Python ints: numbers when exact, bigints beyond 2^53. */
  const fromLong = (b: Uint8Array): number | bigint => {
    if (b.length === 0) return 0;
    let v = 0n;
    for (let i = b.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(b[i]);
    if (b[b.length - 1] & 0x80) v -= 1n << BigInt(8 * b.length);
    return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  };
  const textInt = (s: string): number | bigint => {
    const t = s.endsWith('L') ? s.slice(0, -1) : s;
    if (!/^[+-]?\d+$/.test(t)) throw new PickleError(`pickle INT has a malformed value ${JSON.stringify(s)}`);
    const v = BigInt(t);
    return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  };
  const copy = (b: Uint8Array): Uint8Array => new Uint8Array(b);

  for (;;) {
    const op = u8();
    switch (op) {
      case 0x80: // PROTO
        if (u8() > 5) throw new PickleError('pickle protocol newer than 5');
        break;
      case 0x95: // FRAME: framing is only a read-ahead hint
        take(8);
        break;
      case 0x2e: // STOP
        return { value: pop(), end: pos };

      case 0x28: // MARK
        metastack.push(stack);
        stack = [];
        break;
      case 0x30: // POP
        pop();
        break;
      case 0x31: // POP_MARK
        popMark();
        break;
      case 0x32: // DUP
        stack.push(top());
        break;

      case 0x4e: stack.push(null); break; // NONE
      case 0x88: stack.push(true); break; // NEWTRUE
      case 0x89: stack.push(false); break; // NEWFALSE
      case 0x4a: stack.push(i32()); break; // BININT
      case 0x4b: stack.push(u8()); break; // BININT1
      case 0x4d: stack.push(u16()); break; // BININT2
      case 0x8a: stack.push(fromLong(take(u8()))); break; // LONG1
      case 0x8b: { // LONG4
        const n = i32();
        if (n < 0) throw new PickleError('pickle LONG4 with a negative length');
        stack.push(fromLong(take(n)));
        break;
      }
      case 0x49: { // INT (protocol 0; "00"/"01" are booleans)
        const s = line();
        stack.push(s === '00' ? false : s === '01' ? true : textInt(s));
        break;
      }
      case 0x4c: stack.push(textInt(line())); break; // LONG (protocol 0)
      case 0x47: { // BINFLOAT (big-endian double)
        need(8);
        stack.push(view.getFloat64(pos, false));
        pos += 8;
        break;
      }
      case 0x46: stack.push(Number.parseFloat(line())); break; // FLOAT (protocol 0)

      case 0x58: stack.push(utf8.decode(take(u32()))); break; // BINUNICODE
      case 0x8c: stack.push(utf8.decode(take(u8()))); break; // SHORT_BINUNICODE
      case 0x8d: stack.push(utf8.decode(take(u64()))); break; // BINUNICODE8
      // Python 2 str: torch.load decodes these with encoding='utf-8'.
      case 0x54: stack.push(utf8.decode(take(i32()))); break; // BINSTRING
      case 0x55: stack.push(utf8.decode(take(u8()))); break; // SHORT_BINSTRING
      case 0x56: // UNICODE (raw-unicode-escape, protocol 0)
        stack.push(line().replace(/\\u([0-9a-fA-F]{4})|\\U([0-9a-fA-F]{8})/g, (_m, a: string | undefined, b: string | undefined) =>
          String.fromCodePoint(Number.parseInt(a ?? b ?? '0', 16))));
        break;
      case 0x53: { // STRING (protocol 0, quoted repr): only the escape-free form torch never needs anyway
        const s = line();
        const q = s[0];
        if ((q !== "'" && q !== '"') || s[s.length - 1] !== q || s.includes('\\')) {
          throw new PickleError('pickle STRING with escapes is not supported');
        }
        stack.push(s.slice(1, -1));
        break;
      }
      case 0x42: stack.push(copy(take(u32()))); break; // BINBYTES
      case 0x43: stack.push(copy(take(u8()))); break; // SHORT_BINBYTES
      case 0x8e: stack.push(copy(take(u64()))); break; // BINBYTES8
      case 0x96: stack.push(copy(take(u64()))); break; // BYTEARRAY8

      case 0x29: stack.push([]); break; // EMPTY_TUPLE
      case 0x85: stack.push([pop()]); break; // TUPLE1
      case 0x86: { const b = pop(); const a = pop(); stack.push([a, b]); break; } // TUPLE2
      case 0x87: { const c = pop(); const b = pop(); const a = pop(); stack.push([a, b, c]); break; } // TUPLE3
      case 0x74: { const items = popMark(); stack.push(items); break; } // TUPLE
      case 0x5d: stack.push([]); break; // EMPTY_LIST
      case 0x6c: { const items = popMark(); stack.push(items); break; } // LIST
      case 0x61: { const v = pop(); asList(top(), 'APPEND').push(v); break; } // APPEND
      case 0x65: { const items = popMark(); const l = asList(top(), 'APPENDS'); for (const v of items) l.push(v); break; } // APPENDS
      case 0x8f: stack.push([]); break; // EMPTY_SET
      case 0x90: { const items = popMark(); const s = asList(top(), 'ADDITEMS'); for (const v of items) s.push(v); break; } // ADDITEMS
      case 0x91: { const items = popMark(); stack.push(items); break; } // FROZENSET
      case 0x7d: stack.push(new Map()); break; // EMPTY_DICT
      case 0x64: { const d: PyDict = new Map(); setItems(d, popMark()); stack.push(d); break; } // DICT
      case 0x73: { const v = pop(); const k = pop(); asDict(top(), 'SETITEM').set(k, v); break; } // SETITEM
      case 0x75: { const items = popMark(); setItems(asDict(top(), 'SETITEMS'), items); break; } // SETITEMS

      case 0x71: memo.set(u8(), top()); break; // BINPUT
      case 0x72: memo.set(u32(), top()); break; // LONG_BINPUT
      case 0x94: memo.set(memo.size, top()); break; // MEMOIZE
      case 0x70: memo.set(Number(textInt(line())), top()); break; // PUT
      case 0x68: stack.push(memoGet(u8())); break; // BINGET
      case 0x6a: stack.push(memoGet(u32())); break; // LONG_BINGET
      case 0x67: stack.push(memoGet(Number(textInt(line())))); break; // GET

      case 0x63: { // GLOBAL
        const module = line();
        const name = line();
        stack.push(hooks.findClass(module, name));
        break;
      }
      case 0x93: { // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== 'string' || typeof name !== 'string') throw new PickleError('pickle STACK_GLOBAL needs two strings');
        stack.push(hooks.findClass(module, name));
        break;
      }
      case 0x52: { // REDUCE
        const args = pop();
        const fn = pop();
        stack.push(hooks.call(fn, asList(args, 'REDUCE')));
        break;
      }
      case 0x81: { // NEWOBJ: cls.__new__(cls, *args)
        const args = pop();
        const cls = pop();
        stack.push(hooks.call(cls, asList(args, 'NEWOBJ')));
        break;
      }
      case 0x92: { // NEWOBJ_EX: keyword arguments are not part of any state_dict
        const kwargs = pop();
        const args = pop();
        const cls = pop();
        if (!(kwargs instanceof Map) || kwargs.size > 0) throw new PickleError('pickle NEWOBJ_EX with keyword arguments is not supported');
        stack.push(hooks.call(cls, asList(args, 'NEWOBJ_EX')));
        break;
      }
      case 0x69: { // INST
        const module = line();
        const name = line();
        const cls = hooks.findClass(module, name);
        const args = popMark();
        stack.push(hooks.call(cls, args));
        break;
      }
      case 0x6f: { // OBJ
        const items = popMark();
        if (items.length === 0) throw new PickleError('pickle OBJ without a class');
        stack.push(hooks.call(items[0], items.slice(1)));
        break;
      }
      case 0x62: { // BUILD
        const state = pop();
        const obj = pop();
        stack.push(hooks.build(obj, state));
        break;
      }
      case 0x51: stack.push(hooks.persistentLoad(pop())); break; // BINPERSID
      case 0x50: stack.push(hooks.persistentLoad(line())); break; // PERSID

      case 0x82: case 0x83: case 0x84: // EXT1/2/4
        throw new PickleError('pickle uses the copyreg extension registry, which is not supported');
      case 0x97: case 0x98: // NEXT_BUFFER / READONLY_BUFFER
        throw new PickleError('pickle uses out-of-band buffers, which are not supported');
      default:
        throw new PickleError(`unknown pickle opcode 0x${op.toString(16).padStart(2, '0')} at byte ${pos - 1}`);
    }
  }
}
