/**
 * CRC-32C (Castagnoli): the checksum of every checksummed structure npmu
 * writes to a device — the unit superblock (`unit/layout.ts`) and the PMM's
 * metadata slots — so that a torn or corrupted copy is recognised and the
 * other copy used ([0060], [0062]).
 *
 * Reflected polynomial 0x82F63B78, initial value and final XOR 0xFFFFFFFF (the
 * iSCSI / ext4 / SSE4.2 `crc32` variant). Software slicing-by-8: eight
 * 256-entry tables, eight input bytes per step.
 *
 * @example
 * crc32c(Buffer.from('123456789')) === 0xe3069283
 * // Incremental: feed the previous result back as the seed.
 * crc32c(b, crc32c(a)) === crc32c(Buffer.concat([a, b]))
 */

const POLY = 0x82f63b78;

/** T[k][n]: CRC of byte n followed by k zero bytes (slicing-by-8 tables). */
const T: Uint32Array = (() => {
  const t = new Uint32Array(8 * 256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
    t[n] = c;
  }
  for (let n = 0; n < 256; n++) {
    let c = t[n]!;
    for (let k = 1; k < 8; k++) {
      c = t[c & 0xff]! ^ (c >>> 8);
      t[k * 256 + n] = c;
    }
  }
  return t;
})();

/**
 * CRC-32C of `data` (or of its bytes [start, end)).
 *
 * @param data bytes to checksum (any `Uint8Array`, including a `Buffer`).
 * @param seed a previous result to continue from (0 to start). Checksumming a
 *   message in pieces, each call seeded with the previous result, gives the
 *   same value as one call over the whole.
 * @param start, end the range of `data` to checksum (default: all of it;
 *   saves a `subarray` on hot paths). Not checked: callers pass a valid range.
 * @returns the checksum as an unsigned 32-bit number.
 */
export function crc32c(data: Uint8Array, seed = 0, start = 0, end = data.length): number {
  let crc = ~seed >>> 0;
  const len = end;
  let i = start;
  // Slicing-by-8 over the bulk of the input.
  const end8 = len - ((len - start) % 8);
  while (i < end8) {
    const lo =
      (crc ^ (data[i]! | (data[i + 1]! << 8) | (data[i + 2]! << 16) | (data[i + 3]! << 24))) >>> 0;
    const hi = data[i + 4]! | (data[i + 5]! << 8) | (data[i + 6]! << 16) | (data[i + 7]! << 24);
    crc =
      T[7 * 256 + (lo & 0xff)]! ^
      T[6 * 256 + ((lo >>> 8) & 0xff)]! ^
      T[5 * 256 + ((lo >>> 16) & 0xff)]! ^
      T[4 * 256 + (lo >>> 24)]! ^
      T[3 * 256 + (hi & 0xff)]! ^
      T[2 * 256 + ((hi >>> 8) & 0xff)]! ^
      T[256 + ((hi >>> 16) & 0xff)]! ^
      T[(hi >>> 24) & 0xff]!;
    i += 8;
  }
  while (i < len) {
    crc = T[(crc ^ data[i]!) & 0xff]! ^ (crc >>> 8);
    i++;
  }
  return ~crc >>> 0;
}
