import t from 'tap';
import { crc32c } from '../../lib/crc32c';

/** Bit-at-a-time reference implementation, to cross-check the sliced tables. */
function reference(data: Uint8Array, seed = 0): number {
  let c = ~seed >>> 0;
  for (const b of data) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
  }
  return ~c >>> 0;
}

t.test('published test vectors', async (t) => {
  t.equal(crc32c(Buffer.from('123456789')), 0xe3069283, '"123456789"');
  t.equal(crc32c(new Uint8Array(32)), 0x8a9136aa, '32 zero bytes');
  t.equal(crc32c(new Uint8Array(32).fill(0xff)), 0x62a8ab43, '32 0xFF bytes');
  const inc = new Uint8Array(32).map((_, i) => i);
  t.equal(crc32c(inc), 0x46dd794e, '32 incrementing bytes (RFC 3720 B.4)');
  const dec = new Uint8Array(32).map((_, i) => 31 - i);
  t.equal(crc32c(dec), 0x113fdb5c, '32 decrementing bytes (RFC 3720 B.4)');
  t.equal(crc32c(new Uint8Array(0)), 0, 'empty input');
  t.equal(crc32c(new Uint8Array(0), 0x12345678), 0x12345678, 'empty input keeps the seed');
});

t.test('matches the bitwise reference at every length and alignment', async (t) => {
  const buf = new Uint8Array(300);
  let x = 0x9e3779b9;
  for (let i = 0; i < buf.length; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    buf[i] = x >>> 24;
  }
  let bad = 0;
  for (let start = 0; start < 9; start++) {
    for (let len = 0; len + start <= buf.length; len += 1) {
      const v = buf.subarray(start, start + len);
      if (crc32c(v) !== reference(v)) bad++;
    }
  }
  t.equal(bad, 0, 'no mismatches');
});

t.test('incremental (seed chaining) equals one-shot', async (t) => {
  const data = Buffer.from('The quick brown fox jumps over the lazy dog, repeatedly and at length.');
  const whole = crc32c(data);
  for (let cut = 0; cut <= data.length; cut++) {
    const a = crc32c(data.subarray(0, cut));
    t.equal(crc32c(data.subarray(cut), a), whole, `split at ${cut}`);
  }
  // three pieces
  const a = crc32c(data.subarray(0, 5));
  const b = crc32c(data.subarray(5, 41), a);
  t.equal(crc32c(data.subarray(41), b), whole, 'three pieces');
  t.equal(crc32c(data, 0xdeadbeef), reference(data, 0xdeadbeef), 'arbitrary seed matches reference');
});

t.test('works on a Uint8Array view with a byte offset', async (t) => {
  const backing = new Uint8Array(64);
  backing.set(Buffer.from('123456789'), 7);
  t.equal(crc32c(backing.subarray(7, 16)), 0xe3069283);
});

t.test('a single flipped bit changes the checksum', async (t) => {
  const data = Buffer.alloc(256, 0x5a);
  const base = crc32c(data);
  let same = 0;
  for (let i = 0; i < data.length * 8; i++) {
    data[i >> 3]! ^= 1 << (i & 7);
    if (crc32c(data) === base) same++;
    data[i >> 3]! ^= 1 << (i & 7);
  }
  t.equal(same, 0);
});

t.test('a range [start, end) checksums the same as a subarray of it', async (t) => {
  const data = Buffer.alloc(300);
  for (let i = 0; i < data.length; i++) data[i] = (i * 131 + 7) & 0xff;
  let bad = 0;
  for (let s = 0; s < 24; s++) for (let e = s; e <= data.length; e += 5) if (crc32c(data, 0x1234, s, e) !== crc32c(data.subarray(s, e), 0x1234)) bad++;
  t.equal(bad, 0);
  t.equal(crc32c(Buffer.from('xx123456789yy'), 0, 2, 11), 0xe3069283);
});
