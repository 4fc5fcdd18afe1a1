// Cuts files with the web page's chunker and hashes the chunks with its
// vendored BLAKE3, as the page's worker does; prints one JSON line per file:
// [[offset, length, blake3 hex], ...]. Driven by tests/client/test_web_chunker.py.
//
// Usage: node chunk_file.mjs MIN AVG MAX FILE...

import fs from "node:fs";
import { createRequire } from "node:module";
import { chunks, FastCDC } from "../../daemon/http/web/chunker.js";

const require = createRequire(import.meta.url);
const { createBLAKE3 } = require("../../daemon/http/web/vendor/hash-wasm/blake3.umd.min.js");

const [min, avg, max, ...files] = process.argv.slice(2);
const cdc = new FastCDC({ min: Number(min), avg: Number(avg), max: Number(max) });
const hasher = await createBLAKE3();
for (const file of files) {
  const fd = fs.openSync(file, "r");
  const size = fs.fstatSync(fd).size;
  const read = async (offset, length) => {
    const buf = new Uint8Array(length);
    const n = fs.readSync(fd, buf, 0, length, offset);
    return buf.subarray(0, n);
  };
  const out = [];
  // A small block size, so that blocks end mid-chunk often.
  for await (const [offset, length, bytes] of chunks(cdc, size, read, 1 << 16)) {
    hasher.init();
    hasher.update(bytes);
    out.push([offset, length, hasher.digest("hex")]);
  }
  fs.closeSync(fd);
  console.log(JSON.stringify(out));
}
