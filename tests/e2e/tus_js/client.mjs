// tus-js-client under node, driven by tests/e2e/test_e2e_tus.py.
//
// Usage: node client.mjs --endpoint URL --file PATH [--chunk-size BYTES] [--parallel N]
//            [--abort-after BYTES] [--url-storage PATH] [--name NAME] [--throttle-mib-s N]
//            [--token TOKEN]
//
// Uploads PATH (as an fs.ReadStream, so tus-js-client reads slices of the file).
// --chunk-size 0 (the default) sends everything in one PATCH. --parallel N > 1 uses
// tus-js-client's parallelUploads: N partial uploads sent at once, then a final upload
// (tus concatenation). --url-storage keeps upload URLs by file fingerprint in a JSON
// file (tus.FileUrlStorage); a later run with the same file and storage resumes the
// upload it finds there through a new Upload object. --token sends
// "Authorization: Bearer TOKEN" with every request. --abort-after stops the upload
// with upload.abort() once that many bytes have been sent; on loopback a whole file goes
// faster than tus-js-client reports progress (every 100 ms), so --throttle-mib-s slows
// request bodies down to N MiB/s to stop mid-PATCH. Prints one JSON line:
// {"event": "success" | "aborted", "url", "sent", "resumed": bool, "resumed_from",
//  "patches", "client"}; resumed_from is the Upload-Offset the resuming HEAD returned.

import fs from "node:fs";
import path from "node:path";
import { Readable, Transform } from "node:stream";
import { parseArgs } from "node:util";
import * as tus from "tus-js-client";

// Passes bytes on no faster than `bytesPerSecond`.
class Throttle extends Transform {
  constructor(bytesPerSecond) {
    super();
    this.rate = bytesPerSecond;
    this.started = Date.now();
    this.passed = 0;
  }

  _transform(chunk, _encoding, done) {
    this.passed += chunk.length;
    const due = this.started + (this.passed / this.rate) * 1000;
    setTimeout(() => done(null, chunk), Math.max(0, due - Date.now()));
  }
}

// tus-js-client's own node HTTP stack, with request bodies throttled.
class ThrottledHttpStack extends tus.DefaultHttpStack {
  constructor(bytesPerSecond) {
    super();
    this.rate = bytesPerSecond;
  }

  createRequest(method, url) {
    const request = super.createRequest(method, url);
    const send = request.send.bind(request);
    request.send = (body) => {
      if (!(body instanceof Readable)) return send(body);
      const slow = body.pipe(new Throttle(this.rate));
      slow.size = body.size; // the stack sets Content-Length from it
      return send(slow);
    };
    return request;
  }
}

const { values: args } = parseArgs({
  options: {
    endpoint: { type: "string" },
    file: { type: "string" },
    "chunk-size": { type: "string", default: "0" },
    parallel: { type: "string", default: "1" },
    "abort-after": { type: "string", default: "0" },
    "url-storage": { type: "string" },
    name: { type: "string" },
    "throttle-mib-s": { type: "string", default: "0" },
    token: { type: "string" },
  },
});
for (const key of ["endpoint", "file"]) {
  if (!args[key]) {
    console.error(`client.mjs: --${key} is required`);
    process.exit(2);
  }
}

const chunkSize = Number(args["chunk-size"]) || Number.POSITIVE_INFINITY;
const parallel = Number(args.parallel);
const abortAfter = Number(args["abort-after"]);
const version = JSON.parse(
  fs.readFileSync(new URL("./node_modules/tus-js-client/package.json", import.meta.url), "utf8"),
).version;
const result = {
  event: null,
  url: null,
  sent: 0,
  resumed: false,
  resumed_from: null,
  patches: 0,
  client: `tus-js-client ${version} (node ${process.versions.node})`,
};

const options = {
  endpoint: args.endpoint,
  chunkSize,
  // Retries cover a 409 while the server still finishes the aborted request.
  retryDelays: [0, 250, 500, 1000, 2000],
  metadata: {
    filename: args.name ?? path.basename(args.file),
    filetype: "application/octet-stream",
  },
  onBeforeRequest(req) {
    if (req.getMethod() === "PATCH") result.patches += 1;
  },
  onAfterResponse(req, res) {
    if (req.getMethod() === "HEAD" && result.resumed_from === null) {
      result.resumed_from = Number(res.getHeader("Upload-Offset"));
    }
  },
};
if (parallel > 1) options.parallelUploads = parallel;
if (args.token) options.headers = { Authorization: `Bearer ${args.token}` };
const throttle = Number(args["throttle-mib-s"]);
if (throttle > 0) options.httpStack = new ThrottledHttpStack(throttle * 1024 * 1024);
if (args["url-storage"]) {
  options.urlStorage = new tus.FileUrlStorage(args["url-storage"]);
  options.storeFingerprintForResuming = true;
} else {
  options.storeFingerprintForResuming = false;
}

const outcome = await new Promise((resolve, reject) => {
  const upload = new tus.Upload(fs.createReadStream(args.file), {
    ...options,
    onProgress(sent) {
      result.sent = sent;
      if (abortAfter > 0 && sent >= abortAfter && result.event === null) {
        result.event = "aborted";
        // Keep the upload on the server (no termination): a later run resumes it.
        upload.abort(false).then(() => resolve(upload), reject);
      }
    },
    onError: (err) => reject(new Error(String(err?.message ?? err))),
    onSuccess: () => {
      result.event = "success";
      resolve(upload);
    },
  });
  upload
    .findPreviousUploads()
    .then((previous) => {
      if (args["url-storage"] && previous.length > 0) {
        result.resumed = true;
        upload.resumeFromPreviousUpload(previous[0]);
      }
      upload.start();
    })
    .catch(reject);
}).catch((err) => {
  console.error(`client.mjs: ${err.message}`);
  process.exit(1);
});

result.url = outcome.url;
console.log(JSON.stringify(result));
// An aborted request may leave a socket open; do not wait for it.
process.exit(0);
