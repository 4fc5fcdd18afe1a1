// Cuts a File into content-defined chunks and hashes each with BLAKE3, off the
// page's main thread. Messages in: {file, chunking: {min_size, avg_size,
// max_size}}. Messages out: {type: "chunks", chunks: [[offset, size, hash]…]}
// as they are found, then {type: "done"}, or {type: "error", message}.

import { chunks, FastCDC } from "./chunker.js";
import "./vendor/hash-wasm/blake3.umd.min.js";

const { createBLAKE3 } = globalThis.hashwasm;
// Chunks are reported in batches, at most this often (ms), so that the page
// can draw the grid without a message per chunk.
const REPORT_EVERY = 100;

self.onmessage = async ({ data: { file, chunking } }) => {
  try {
    const cdc = new FastCDC({
      min: chunking.min_size,
      avg: chunking.avg_size,
      max: chunking.max_size,
    });
    const hasher = await createBLAKE3();
    const read = async (offset, length) =>
      new Uint8Array(await file.slice(offset, offset + length).arrayBuffer());
    let batch = [];
    let last = performance.now();
    for await (const [offset, size, bytes] of chunks(cdc, file.size, read)) {
      hasher.init();
      hasher.update(bytes);
      batch.push([offset, size, hasher.digest("hex")]);
      if (performance.now() - last >= REPORT_EVERY) {
        self.postMessage({ type: "chunks", chunks: batch });
        batch = [];
        last = performance.now();
      }
    }
    self.postMessage({ type: "chunks", chunks: batch });
    self.postMessage({ type: "done" });
  } catch (err) {
    self.postMessage({ type: "error", message: String(err?.message ?? err) });
  }
};
