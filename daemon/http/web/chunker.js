// FastCDC (the 2020 paper's algorithm with normalised chunking level 1), cutting
// exactly where pyfastcdc 1.x — and so `ingestd upload` — cuts. Its gear
// table and masks are pyfastcdc's (from fastcdc-rs), as [high, low] 32-bit
// halves: the 64-bit rolling hash is kept in two uint32s, which is much
// faster than BigInt. Pure functions, no DOM: the Web Worker and the tests
// (node) import it alike.

// prettier-ignore
const GEAR = new Uint32Array([
  0x3b5d3c7d, 0x207e37dc, 0x784d68ba, 0x91123086, 0xcd52880f, 0x882e7298, 0xeacf8e4e, 0x19fdcca7,
  0xc31f385d, 0xfbd1632b, 0x1d5f2700, 0x1e25abe6, 0x83130bde, 0x3c9ad991, 0xc4b22567, 0x6e9b7649,
  0xaa329b29, 0xe08eb499, 0xb67fcbd2, 0x1e577d58, 0x0027baaa, 0xda2acf6b, 0xe3ef2d5a, 0xc73c2226,
  0x0890f24d, 0x6ed312b7, 0xa809e036, 0x851d7c7e, 0xf0a6fe5e, 0x0013d81b, 0x1d026304, 0x452cec14,
  0x03864632, 0x648e248f, 0xcdaacf3d, 0xcd92b9b4, 0xf5e012e6, 0x3c187856, 0x8862f9d3, 0x821c00b6,
  0xa82f7338, 0x750f6f8a, 0x1e583dc6, 0xc1cb0b6f, 0x7a3145b6, 0x9743a7f1, 0xabb20fee, 0x404807eb,
  0xb14b3cfe, 0x07b83a5d, 0xb9dc2789, 0x8adb9a0f, 0x3703f5e9, 0x1baa62be, 0xcf0bb866, 0x815f7d98,
  0x3d9867c4, 0x1ea9dcd3, 0x1be1fa65, 0x442bf22c, 0x14300da4, 0xc55631d9, 0xe698e9cb, 0xc6545c99,
  0x4763107e, 0xc64e92a5, 0xc65821fc, 0x65696a24, 0x76196c06, 0x4822f0b7, 0x485be841, 0xf3525e01,
  0xf652bc9c, 0x85974ff5, 0xcad8352f, 0xace9e3e9, 0x2a6ed1dc, 0xeb35e98e, 0xc6f483ba, 0xdc11680f,
  0x3cfd8c17, 0xe9cf12f1, 0x89b83c5e, 0x2ea56471, 0xae665cfd, 0x24e392a9, 0xec33c4e5, 0x04cb8915,
  0x3fb9b15f, 0xc9fe7451, 0xd7fd1fd1, 0x945f2195, 0x31ade085, 0x3443efd8, 0x255efc98, 0x63e1e2d2,
  0x10eab600, 0x8d5642cf, 0x46f04863, 0x257ac804, 0xa52dc42a, 0x789a27d3, 0xdaaadf9c, 0xe77af565,
  0x6b479cd5, 0x3d87febb, 0x6309e2d3, 0xf93db72f, 0xc5738ffb, 0xaa1ff9d6, 0x6bd57f3f, 0x25af7968,
  0x67605486, 0xd90d0a4a, 0xe14d0b96, 0x63bfbdae, 0xb7bbd8d8, 0x16eb0414, 0xdef8a4f1, 0x6b35a116,
  0xe7932d85, 0xaaaffed6, 0x08161cba, 0xe90cfd48, 0x855507be, 0xb294f08b, 0x91234ea6, 0xffd399b2,
  0xad70cf4b, 0x2435f302, 0xd289a975, 0x65bc2d27, 0x8e558437, 0xffca99de, 0x96d2704b, 0x7115c040,
  0x0889bbcd, 0xfc660e41, 0x5e0d4e67, 0xdc92128d, 0x72a9f891, 0x7063ed97, 0x438b69d4, 0x09e016e3,
  0xdf4fed8a, 0x5d8a4397, 0x00f41dcf, 0x41d403f7, 0x4814eb03, 0x8e52603f, 0x9dafbacc, 0x58e2d651,
  0xfe2f458e, 0x4be170af, 0x4457ec41, 0x4df6a940, 0x06e62f14, 0x51123314, 0xbd1014d1, 0x73ba92cc,
  0xdef318e2, 0x5ed57760, 0x9fea0de9, 0xdfca8525, 0x459de1e7, 0x6c20624b, 0xaeec1896, 0x17e2d666,
  0x126a2c06, 0xab5a83cb, 0xb1321532, 0x360f6132, 0x65421503, 0xdbb40123, 0x2d67c287, 0xea089ab3,
  0x6c93bff5, 0xa56bd6b6, 0x4ffb2036, 0xcab6d98d, 0xce7b785b, 0x1be7ad4f, 0xedb42ef6, 0x189fd163,
  0xdc905288, 0x703988f6, 0x365f9c1d, 0x2c691884, 0xc6405836, 0x80d99bfe, 0x3cd4624c, 0x07593ec6,
  0x7f1ea8d8, 0x5d7c5805, 0x014842d4, 0x80b57149, 0x0b649bcb, 0x5a828688, 0xbcd5708e, 0xd79b18f0,
  0xe987c862, 0xfbd2f2f0, 0x98273167, 0x1f0cd82c, 0xbaf13e8b, 0x16d8c063, 0x8ea3109c, 0xbd951bba,
  0xd141045b, 0xfb385cad, 0x2acbc1a0, 0xaf1f7d30, 0xe6444d89, 0xdf03bfdf, 0xa18cc771, 0xb8188ff9,
  0x9834429d, 0xb01c39bb, 0x214add07, 0xfe086a1f, 0x8f07c19b, 0x1f6b3ff9, 0x56a297b1, 0xbf4ffe55,
  0x94d558e4, 0x93c54fc7, 0x40bfc24c, 0x764552cb, 0x931a706f, 0x8a8520cb, 0x32229d32, 0x2935bd52,
  0x2560d0f5, 0xdc4fefaf, 0x9dbcc483, 0x55969bb6, 0x0fd81c39, 0x85c0b56a, 0xe03817e1, 0x560f2bda,
  0xc1bb4f81, 0xd892b2d5, 0xb0c4864f, 0x4e28d2d7, 0x3ecc49f9, 0xd9d6c263, 0x51307e99, 0xb52ba65e,
  0x8af2b688, 0xda84a752, 0xf5d72523, 0xb91b20b6, 0x6d95ff1f, 0xf4634806, 0x562f2155, 0x5458339a,
  0xc0ce47f8, 0x89336346, 0x487823e5, 0x089b40d8, 0xe4727c7e, 0xbc6d9592, 0x5a8f7277, 0xe94970ba,
  0xfca2f406, 0xb1c8bb50, 0x5b1f8a95, 0xf1791070, 0xd304af9f, 0xc9028605, 0x5440ab7f, 0xc930e748,
  0x312d25fb, 0xca2ab5a1, 0x10f4a4b2, 0x34a4d575, 0x90301d55, 0x047e7473, 0x3b637288, 0x6c61591e,
  0x293402b7, 0x7c444e06, 0x451f34a4, 0xd3e97dd7, 0x3158d814, 0xd81bc57b, 0x03494242, 0x5b9bda69,
  0xe2032ff9, 0xe532d9bb, 0x62ae066b, 0x8b2179e5, 0x9545e10c, 0x2f8d71d8, 0x7ff7483e, 0xb2d23fc0,
  0x00945fce, 0xbdc98d86, 0x8764bbbe, 0x99b26ca2, 0x1b1ec622, 0x84c0bfc3, 0x58e0fcc4, 0xf0aa362b,
  0x5f4abefa, 0x878d458d, 0xfd74ac2f, 0x9607c519, 0xa4e3fb37, 0xdf8cbfa9, 0xbf697e43, 0xcac574e5,
  0x86f14a3f, 0x68f4cd53, 0x24a23d07, 0x6f1ce522, 0xe725cd80, 0x48868cc8, 0xbf3c729e, 0xb2464362,
  0xd8f6cd57, 0xb3cc1ed8, 0x6329e524, 0x25541577, 0x62aa688a, 0xd5ae1ac0, 0x0a242566, 0x269bf845,
  0x168b1a47, 0x53aca74b, 0xf789afef, 0xff2e7e3c, 0x6c336209, 0x3b6fccdb, 0x4ce8f50b, 0xd28c09b2,
  0x006a2db9, 0x5ae8aa93, 0x975b0d62, 0x3c3d1a8c, 0x18605d39, 0x35338c5b, 0x5bb6f613, 0x6cad3c71,
  0x0f53a207, 0x01f8d8a6, 0xab8c5ad2, 0xe7e93c67, 0x40b5ac51, 0x27acaa29, 0x8c7bf63c, 0x2075895f,
  0x78bd9f7e, 0x014a805c, 0xb2c9e9f4, 0xf9c8c032, 0xefd60498, 0x27eb91f3, 0x2be459f4, 0x82c16fbd,
  0xd92ce0c5, 0x745aaa8c, 0x0aaa8fb2, 0x98d965b9, 0x2b37f92c, 0x6c803b15, 0x8c54a5e9, 0x4e0f0e78,
  0x95f9b6e9, 0x0c0a3032, 0xe7939faa, 0x436c7874, 0xd16bfe8f, 0x6a8a40c9, 0x44982b86, 0x263fd2fa,
  0xe285fb39, 0xf984e583, 0x779a8df7, 0x2d7619d3, 0xf2d79a8d, 0xe8d5dd1e, 0xd1037354, 0xd66684e2,
  0x004c82a4, 0xe668a8e5, 0x31d40a76, 0x68b044e6, 0xd7057853, 0x8bd02c11, 0xdb454310, 0x78c5f482,
  0x977121bb, 0x7f6a51ad, 0x73d5ccbd, 0x34eff8dd, 0xe437a07d, 0x356e17cd, 0x47b27820, 0x43c95627,
  0x9fb25141, 0x3e41d49a, 0xccd70b60, 0x652513d3, 0x1c95b31e, 0x8a1b49b2, 0xcae73dfd, 0x1bcb4c1b,
  0x34d98331, 0xb1f5b70f, 0x784e39f2, 0x2338d92f, 0x18613d4a, 0x064df420, 0xf1d8dae2, 0x5f0bcebe,
  0x33f77c15, 0xae855efc, 0x3c88b3b9, 0x12eb109c, 0x956a2ec9, 0x6bafeea5, 0x1aa005b5, 0xe0ad0e87,
  0x5500d705, 0x27c4bb8e, 0xe36c5719, 0x6421cc44, 0x13c4d286, 0xcc36ee39, 0x5654a23d, 0x818b2a81,
  0x77b1dc13, 0xd161abdc, 0x734f44de, 0x5f8d5eb5, 0x60717e17, 0x4a6c89a2, 0xd47d9649, 0x266a211e,
  0x5b13a432, 0x2bb69e90, 0xf7669609, 0xf8b5fc3c, 0x21e6ac55, 0xbedcdac9, 0x9b56b62b, 0x61166dea,
  0xf48f66b9, 0x39797e9c, 0x35f332f9, 0xc0e6ae9a, 0xcc733f6a, 0x9a878db0, 0x3da161e4, 0x1cc108c2,
  0xb7d74ae5, 0x35914d51, 0x4d493b0b, 0x11d36469, 0xce264d1d, 0xfba9741a, 0xa9d1f2dc, 0x7436dc06,
  0x70738016, 0x604c2a27, 0x231d36e9, 0x6e93f3d5, 0x76668811, 0x97838d19, 0x4a2a8309, 0x0aaad40c,
  0xf1e76159, 0x1668b35d, 0x73632364, 0x97f730a7, 0x301080e3, 0x7379dd4d, 0x502dea29, 0x71827042,
  0xc2c5eb85, 0x8f32625f, 0x786afb9e, 0xdfafbdff, 0xdaee0d86, 0x8490b2a4, 0x617366b3, 0x268609f6,
  0xae0e35a0, 0xfe46173e, 0xd1a07de9, 0x3e824f11, 0x079b8b11, 0x5ea4cca8, 0x93a99274, 0x558faebb,
  0xfb1e6e22, 0xe08a03b3, 0xea635fdb, 0xa3698dd0, 0xcf536593, 0x28503a5c, 0xcde3b31e, 0x6fd5d780,
  0x8e3e4221, 0xd3614413, 0xef14d0d8, 0x6bf1a22c, 0xe1d830d3, 0xf16c5ddb, 0xaabd2b2a, 0x451504e1,
]);

// prettier-ignore
const MASKS = new Uint32Array([
  0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x00000000,
  0x00000000, 0x00000000, 0x00000000, 0x01804110, 0x00000000, 0x01803110, 0x00000000, 0x18035100,
  0x00000018, 0x00035300, 0x00000190, 0x00353000, 0x00005900, 0x03530000, 0x0000d900, 0x03530000,
  0x0000d901, 0x03530000, 0x0000d903, 0x03530000, 0x0000d903, 0x13530000, 0x0000d90f, 0x03530000,
  0x0000d903, 0x03537000, 0x0000d907, 0x03537000, 0x0000d907, 0x07537000, 0x0000d917, 0x07537000,
  0x0000d917, 0x47537000, 0x0000d917, 0x67537000, 0x0000d937, 0x67537000, 0x0000d937, 0x77537000,
  0x0000d937, 0x77577000, 0x0000db37, 0x77577000,
]);

// Each gear value shifted left by one bit (pyfastcdc's GEAR_LS).
const GEAR_LS = new Uint32Array(GEAR.length);
for (let i = 0; i < GEAR.length; i += 2) {
  GEAR_LS[i] = ((GEAR[i] << 1) | (GEAR[i + 1] >>> 31)) >>> 0;
  GEAR_LS[i + 1] = (GEAR[i + 1] << 1) >>> 0;
}

// What pyfastcdc accepts (FastCDC.*_BOUND).
export const BOUNDS = {
  min: [64, 1 << 20],
  avg: [256, 4 << 20],
  max: [1024, 16 << 20],
};

/** Chunk boundaries for the server's sizes (`GET /v1/info` → chunking). */
export class FastCDC {
  constructor({ min, avg, max }) {
    // The CLI rounds an odd minimum up (pyfastcdc scans in steps of two).
    min += min % 2;
    for (const [name, value] of Object.entries({ min, avg, max })) {
      const [low, high] = BOUNDS[name];
      if (!(value >= low && value <= high)) {
        throw new RangeError(`cdc ${name} ${value} is outside ${low}..${high}`);
      }
    }
    if (!(min <= avg && avg <= max)) throw new RangeError("cdc sizes must be min <= avg <= max");
    this.min = min;
    this.avg = avg;
    this.max = max;
    const bits = Math.floor(Math.log2(avg) + 0.5);
    [this.smallHi, this.smallLo] = mask(bits + 1);
    [this.largeHi, this.largeLo] = mask(bits - 1);
  }

  /**
   * The length of the chunk that starts at `start` in `buf` (a Uint8Array
   * holding at least `max` bytes from `start`, or the rest of the file).
   */
  cut(buf, start, end) {
    let remaining = end - start;
    if (remaining <= this.min) return remaining;
    let center = this.avg;
    if (remaining > this.max) remaining = this.max;
    else if (remaining < center) center = remaining;
    let hi = 0;
    let lo = 0;
    const startPos = (this.min >> 1) << 1;
    const midPos = (center >> 1) << 1;
    const endPos = (remaining >> 1) << 1;
    // Each step shifts the hash left by one bit and adds a gear entry; two
    // steps per loop turn, as pyfastcdc does (the first with the masks and the
    // gear value shifted left by one).
    for (const [from, to, mHi, mLo] of [
      [startPos, midPos, this.smallHi, this.smallLo],
      [midPos, endPos, this.largeHi, this.largeLo],
    ]) {
      const mHiLs = ((mHi << 1) | (mLo >>> 31)) >>> 0;
      const mLoLs = (mLo << 1) >>> 0;
      for (let pos = from; pos < to; pos += 2) {
        // hash = (hash << 2) + (gear[b] << 1)
        let b = buf[start + pos] * 2;
        hi = ((hi << 2) | (lo >>> 30)) >>> 0;
        lo = (lo << 2) >>> 0;
        let sum = lo + GEAR_LS[b + 1];
        hi = (hi + GEAR_LS[b] + (sum > 0xffffffff ? 1 : 0)) >>> 0;
        lo = sum >>> 0;
        if ((hi & mHiLs) === 0 && (lo & mLoLs) === 0) return pos;
        // hash = hash + gear[b]
        b = buf[start + pos + 1] * 2;
        sum = lo + GEAR[b + 1];
        hi = (hi + GEAR[b] + (sum > 0xffffffff ? 1 : 0)) >>> 0;
        lo = sum >>> 0;
        if ((hi & mHi) === 0 && (lo & mLo) === 0) return pos + 1;
      }
    }
    return remaining;
  }
}

function mask(bits) {
  return [MASKS[bits * 2], MASKS[bits * 2 + 1]];
}

/**
 * Every chunk of a byte source as [offset, length], reading it in blocks:
 * `read(offset, length)` resolves to a Uint8Array (shorter only at the end).
 */
export async function* chunks(cdc, size, read, blockSize = 8 << 20) {
  const want = Math.max(blockSize, 2 * cdc.max);
  let buf = new Uint8Array(0);
  let bufStart = 0; // file offset of buf[0]
  let offset = 0;
  while (offset < size) {
    const have = bufStart + buf.length - offset;
    if (have < cdc.max && bufStart + buf.length < size) {
      const more = await read(bufStart + buf.length, Math.min(want, size - bufStart - buf.length));
      const joined = new Uint8Array(have + more.length);
      joined.set(buf.subarray(offset - bufStart));
      joined.set(more, have);
      buf = joined;
      bufStart = offset;
      continue;
    }
    const length = cdc.cut(buf, offset - bufStart, buf.length);
    yield [offset, length, buf.subarray(offset - bufStart, offset - bufStart + length)];
    offset += length;
  }
}
