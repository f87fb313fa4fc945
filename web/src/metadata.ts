// Call metadata (docs/PROTOCOL.md, section 9): lower-case keys, each with
// one or more UTF-8 values in order.

/** What a caller may pass as metadata. */
export type MetadataInit = Metadata | Record<string, string | string[]> | Iterable<readonly [string, string]>;

const portableKey = /^[a-z0-9._-]+$/;

/**
 * Reports whether key is a portable metadata key: non-empty, only a-z,
 * 0-9, '-', '_' and '.' once lower-cased (docs/PROTOCOL.md, section 9).
 */
export function isPortableKey(key: string): boolean {
  return portableKey.test(key.toLowerCase());
}

/** Metadata: keys are lower-cased; each key has its values in order. */
export class Metadata {
  private readonly m = new Map<string, string[]>();

  constructor(init?: MetadataInit) {
    if (!init) return;
    if (init instanceof Metadata) {
      for (const [k, vs] of init.m) this.m.set(k, [...vs]);
    } else if (Symbol.iterator in init) {
      for (const [k, v] of init as Iterable<readonly [string, string]>) this.append(k, v);
    } else {
      for (const [k, v] of Object.entries(init)) {
        for (const x of Array.isArray(v) ? v : [v]) this.append(k, x);
      }
    }
  }

  /** The first value of key, or undefined. */
  get(key: string): string | undefined {
    return this.m.get(key.toLowerCase())?.[0];
  }

  /** Every value of key, in order. */
  values(key: string): string[] {
    return [...(this.m.get(key.toLowerCase()) ?? [])];
  }

  /** Replaces key's values with value. */
  set(key: string, value: string): this {
    this.m.set(key.toLowerCase(), [value]);
    return this;
  }

  /** Adds value to key's values. */
  append(key: string, value: string): this {
    const k = key.toLowerCase();
    const vs = this.m.get(k);
    if (vs) vs.push(value);
    else this.m.set(k, [value]);
    return this;
  }

  /** Whether key has a value. */
  has(key: string): boolean {
    return this.m.has(key.toLowerCase());
  }

  /** Removes key. */
  delete(key: string): void {
    this.m.delete(key.toLowerCase());
  }

  /** The keys, sorted. */
  keys(): string[] {
    return [...this.m.keys()].sort();
  }

  /** The number of keys. */
  get size(): number {
    return this.m.size;
  }

  /** [key, values] pairs, keys sorted (the order the client sends them in). */
  entries(): [string, string[]][] {
    return this.keys().map((k) => [k, [...this.m.get(k)!]]);
  }

  /** A plain object, for logging and tests. */
  toJSON(): Record<string, string[]> {
    return Object.fromEntries(this.entries());
  }
}
