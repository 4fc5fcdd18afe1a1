// The peer for bench/upload.py: an @tus/server (v2) with @tus/file-store on loopback.
//
// Usage: node bench/tus_peer_server.mjs --peer-dir bench/.peer --port P --dir DIR [--no-fsync]
//
// --peer-dir is the npm prefix holding node_modules (bench/upload.py installs it).
// Uploads go to POST /files (tus 1.0.0, creation + creation-with-upload); GET /healthz
// answers 200 once the server listens. Unless --no-fsync, the final PATCH of an upload
// is acknowledged only after the stored file (and its directory) are fsynced, so the
// peer's "done" means "on disk", like ingestd's with storage.durability = fsync (ingestd
// fsyncs every chunk, the peer only once at the end, which favours the peer).
// SIGTERM/SIGINT close the server and exit 0.

import fs from "node:fs/promises";
import http from "node:http";
import { createRequire } from "node:module";
import path from "node:path";
import { parseArgs } from "node:util";
import { pathToFileURL } from "node:url";

const { values: args } = parseArgs({
  options: {
    "peer-dir": { type: "string" },
    port: { type: "string" },
    dir: { type: "string" },
    "no-fsync": { type: "boolean", default: false },
  },
});
for (const key of ["peer-dir", "port", "dir"]) {
  if (!args[key]) {
    console.error(`tus_peer_server: --${key} is required`);
    process.exit(2);
  }
}

// Resolve the packages from the peer folder, not from bench/ (where this script lives).
const peerDir = path.resolve(args["peer-dir"]);
const require = createRequire(path.join(peerDir, "package.json"));
const load = async (name) => import(pathToFileURL(require.resolve(name)).href);
const { Server } = await load("@tus/server");
const { FileStore } = await load("@tus/file-store");
// Their package.json files are not exported, so read them by path.
const versionOf = async (name) =>
  JSON.parse(await fs.readFile(path.join(peerDir, "node_modules", name, "package.json"), "utf8"))
    .version;
const versions = {
  "@tus/server": await versionOf("@tus/server"),
  "@tus/file-store": await versionOf("@tus/file-store"),
};

const directory = path.resolve(args.dir);
await fs.mkdir(directory, { recursive: true });
const fsync = !args["no-fsync"];

async function fsyncPath(p, flags) {
  const handle = await fs.open(p, flags);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

const tus = new Server({
  path: "/files",
  datastore: new FileStore({ directory }),
  async onUploadFinish(_req, upload) {
    if (fsync) {
      await fsyncPath(upload.storage?.path ?? path.join(directory, upload.id), "r+");
      await fsyncPath(directory, "r");
    }
    return {};
  },
});

const server = http.createServer((req, res) => {
  if (req.url === "/healthz") {
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ status: "ok", versions, fsync, directory }));
    return;
  }
  tus.handle(req, res);
});
// A 1 GiB PATCH takes longer than node's default 5-minute request timeout on slow disks.
server.requestTimeout = 0;

server.listen(Number(args.port), "127.0.0.1", () => {
  console.log(
    `tus peer listening on http://127.0.0.1:${args.port}/files, dir ${directory}, ` +
      `fsync ${fsync}, ${JSON.stringify(versions)}`,
  );
});

function stop(signal) {
  console.log(`tus peer: ${signal}, closing`);
  server.close(() => process.exit(0));
  server.closeAllConnections?.();
  setTimeout(() => process.exit(0), 5000).unref();
}
process.on("SIGTERM", () => stop("SIGTERM"));
process.on("SIGINT", () => stop("SIGINT"));
