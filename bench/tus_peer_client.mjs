// The tus client for bench/upload.py's peer case: tus-js-client under node.
//
// Usage: node bench/tus_peer_client.mjs --peer-dir bench/.peer --endpoint URL --file PATH
//            [--chunk-mib N]
//
// The file is given to tus-js-client as an fs.ReadStream, so it is streamed from disk;
// without --chunk-mib (or with 0) the whole file goes in one PATCH, otherwise in PATCHes
// of N MiB. No retries: a failed request fails the run. Prints one JSON line:
// {"client", "url", "bytes", "seconds", "chunk_size", "patches"}; seconds runs from
// start() to onSuccess (the server's answer to the last PATCH), without node's startup.

import fs from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { parseArgs } from "node:util";

const { values: args } = parseArgs({
  options: {
    "peer-dir": { type: "string" },
    endpoint: { type: "string" },
    file: { type: "string" },
    "chunk-mib": { type: "string", default: "0" },
  },
});
for (const key of ["peer-dir", "endpoint", "file"]) {
  if (!args[key]) {
    console.error(`tus_peer_client: --${key} is required`);
    process.exit(2);
  }
}

const require = createRequire(path.join(path.resolve(args["peer-dir"]), "package.json"));
const tus = require("tus-js-client");
const version = require("tus-js-client/package.json").version;

const chunkMib = Number(args["chunk-mib"]);
const chunkSize = chunkMib > 0 ? chunkMib * 1024 * 1024 : Number.POSITIVE_INFINITY;
const size = fs.statSync(args.file).size;
let patches = 0;

const t0 = process.hrtime.bigint();
const url = await new Promise((resolve, reject) => {
  const upload = new tus.Upload(fs.createReadStream(args.file), {
    endpoint: args.endpoint,
    chunkSize,
    retryDelays: null,
    storeFingerprintForResuming: false,
    metadata: { filename: path.basename(args.file), filetype: "application/octet-stream" },
    onBeforeRequest(req) {
      if (req.getMethod() === "PATCH") patches += 1;
    },
    onError: (err) => reject(new Error(String(err?.message ?? err))),
    onSuccess: () => resolve(upload.url),
  });
  upload.start();
}).catch((err) => {
  console.error(`tus_peer_client: ${err.message}`);
  process.exit(1);
});
const seconds = Number(process.hrtime.bigint() - t0) / 1e9;

console.log(
  JSON.stringify({
    client: `tus-js-client ${version} (node ${process.versions.node})`,
    url,
    bytes: size,
    seconds,
    chunk_size: Number.isFinite(chunkSize) ? chunkSize : null,
    patches,
  }),
);
