/**
 * The attribute cache of [0096]-[0099].
 *
 * read_attributes fetches a region's attributes from the PMM once and caches
 * them: an `AttrCache` is a snapshot, later changes to the region are not
 * reflected until attributes are read again [0097]. Values are read by name
 * with a typed accessor (get_attr<type>, [0098]); the wrong accessor for an
 * attribute is an error rather than a conversion. free_region_attrs [0099]
 * invalidates the handle.
 *
 * Attribute types (the only widening: getAttrU64 also reads 'number'
 * attributes, which are non-negative safe integers, as a bigint):
 *   name         string   region name
 *   size         number   bytes
 *   basePointer  u64      bigint, the client pointer of the first byte [0069]
 *   owner        string
 *   createdAtMs  date     creation time
 *   lastOpenAtMs date     last open time (the epoch, time 0, if never opened)
 *   durability   string   'pmem' | 'msync' | 'volatile': what a durable write
 *                         means on these units (volatile: lost on power loss)
 *   durable      bool     the region asks for durable writes by default
 *   primaryUnit  string   unit id of the primary half
 *   mirrorUnit   string   unit id of the mirror half
 */
import { NpmuError, argRangeError, argTypeError, argValueError } from '../lib/errors';

export type Durability = 'pmem' | 'msync' | 'volatile';

/** The plain attributes record the PMM sends for one region. */
export interface RegionAttributes {
  name: string;
  size: number;
  basePointer: bigint;
  owner: string;
  createdAtMs: number;
  lastOpenAtMs: number;
  durability: Durability;
  durable: boolean;
  primaryUnit: string;
  mirrorUnit: string;
}

export type AttrType = 'string' | 'u64' | 'number' | 'bool' | 'date';

const SCHEMA: Readonly<Record<keyof RegionAttributes, AttrType>> = Object.freeze({
  name: 'string',
  size: 'number',
  basePointer: 'u64',
  owner: 'string',
  createdAtMs: 'date',
  lastOpenAtMs: 'date',
  durability: 'string',
  durable: 'bool',
  primaryUnit: 'string',
  mirrorUnit: 'string',
});

const DURABILITIES: readonly string[] = ['pmem', 'msync', 'volatile'];
const U64_LIMIT = 1n << 64n;

type Value = string | bigint | number | boolean;

/** The attr_handle of [0097]: a snapshot of one region's attributes. */
export class AttrCache {
  #values: Map<string, Value> | null;

  /** Copies `attrs`; a malformed record is a TypeError / RangeError naming the field. */
  constructor(attrs: RegionAttributes) {
    if (attrs === null || typeof attrs !== 'object') throw argTypeError('attrs', 'an object', attrs);
    const values = new Map<string, Value>();
    for (const [name, type] of Object.entries(SCHEMA)) {
      const v: unknown = (attrs as unknown as Record<string, unknown>)[name];
      const field = `attrs.${name}`;
      switch (type) {
        case 'string':
          if (typeof v !== 'string') throw argTypeError(field, 'of type string', v);
          if (name === 'durability' && !DURABILITIES.includes(v)) {
            throw argValueError(field, `must be one of ${DURABILITIES.join(', ')}`, v);
          }
          break;
        case 'u64':
          if (typeof v !== 'bigint') throw argTypeError(field, 'of type bigint', v);
          if (v < 0n || v >= U64_LIMIT) throw argRangeError(field, '>= 0n and < 2n ** 64n', v);
          break;
        case 'number':
        case 'date':
          if (typeof v !== 'number') throw argTypeError(field, 'of type number', v);
          if (!Number.isSafeInteger(v) || v < 0) throw argRangeError(field, 'a non-negative safe integer', v);
          break;
        case 'bool':
          if (typeof v !== 'boolean') throw argTypeError(field, 'of type boolean', v);
          break;
      }
      values.set(name, v as Value);
    }
    this.#values = values;
  }

  /** Whether free() was called. */
  get freed(): boolean {
    return this.#values === null;
  }

  /** The attribute names, in a stable order. */
  names(): string[] {
    return [...this.#live().keys()];
  }

  /** The type of an attribute, which says which accessor reads it. */
  typeOf(name: string): AttrType {
    this.#live();
    return this.#lookup(name).type;
  }

  /**
   * A string attribute. With `maxLen` (in Unicode code points, like a caller's
   * buffer in [0098]), a longer value throws 'ERR_NPMU_ATTR_TRUNCATED' whose
   * `value` property holds the first `maxLen` characters and `length` the full length.
   */
  getAttrString(name: string, maxLen?: number): string {
    if (maxLen !== undefined && (!Number.isSafeInteger(maxLen) || maxLen < 0)) {
      throw argRangeError('maxLen', 'a non-negative safe integer', maxLen);
    }
    const v = this.#get(name, 'string', 'getAttrString') as string;
    if (maxLen === undefined || v.length <= maxLen) return v; // UTF-16 length bounds the code points
    const chars = Array.from(v);
    if (chars.length <= maxLen) return v;
    const value = chars.slice(0, maxLen).join('');
    throw new NpmuError(
      'ERR_NPMU_ATTR_TRUNCATED',
      `attribute "${name}" is ${chars.length} characters, more than maxLen ${maxLen}; the value is cut`,
      { attr: name, value, length: chars.length, maxLen },
    );
  }

  /** A u64 attribute (or a 'number' one, widened) as a bigint. */
  getAttrU64(name: string): bigint {
    const v = this.#get(name, 'u64', 'getAttrU64', 'number');
    return typeof v === 'bigint' ? v : BigInt(v as number);
  }

  /** A 'number' attribute. */
  getAttrNumber(name: string): number {
    return this.#get(name, 'number', 'getAttrNumber') as number;
  }

  getAttrBool(name: string): boolean {
    return this.#get(name, 'bool', 'getAttrBool') as boolean;
  }

  /** A 'date' attribute, as a new Date each call. */
  getAttrDate(name: string): Date {
    return new Date(this.#get(name, 'date', 'getAttrDate') as number);
  }

  /** free_region_attrs [0099]: releases the cache; every accessor then throws 'ERR_NPMU_ATTR_FREED'. Idempotent. */
  free(): void {
    this.#values = null;
  }

  #live(): Map<string, Value> {
    if (this.#values === null) {
      throw new NpmuError('ERR_NPMU_ATTR_FREED', 'attribute handle was freed (free_region_attrs)');
    }
    return this.#values;
  }

  #lookup(name: string): { type: AttrType; value: Value } {
    if (typeof name !== 'string') throw argTypeError('name', 'of type string', name);
    const values = this.#live();
    if (!Object.hasOwn(SCHEMA, name) || !values.has(name)) {
      throw new NpmuError('ERR_NPMU_ATTR_UNKNOWN', `no attribute named ${JSON.stringify(name)}`, { attr: name });
    }
    return { type: SCHEMA[name as keyof RegionAttributes], value: values.get(name)! };
  }

  #get(name: string, type: AttrType, accessor: string, widen?: AttrType): Value {
    this.#live();
    const a = this.#lookup(name);
    if (a.type !== type && a.type !== widen) {
      throw new NpmuError('ERR_NPMU_ATTR_TYPE', `attribute "${name}" is of type ${a.type}; ${accessor} reads ${type}`, {
        attr: name,
        type: a.type,
        accessor,
      });
    }
    return a.value;
  }
}
