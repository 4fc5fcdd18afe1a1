// The upload page: files are cut and hashed in a Web Worker with the same
// content-defined chunking as `ingestd upload`, declared to /v1, and only the
// chunks the server lacks are sent, in parallel. Unfinished uploads are
// remembered (localStorage, and file handles in IndexedDB where the browser
// has the File System Access API) so that a reload resumes them.

const TOKEN_KEY = "ingestd.token";
const PARALLEL_KEY = "ingestd.parallel";
const RESUME_KEY = "ingestd.resume.v1";
const RETRIES = [500, 1000, 2000]; // ms before each automatic retry of a chunk
const RUN_BYTES = 32 << 20; // the most one PUT carries (consecutive chunks)
const MIN_RUN_BYTES = 4 << 20;
const JOB_WAIT = 30; // seconds a job request may wait on the server

const $ = (id) => document.getElementById(id);

// -- the API -----------------------------------------------------------------

class Problem extends Error {
  constructor(status, body) {
    super(body?.detail || `HTTP ${status}`);
    this.status = status;
    this.code = body?.code || `http_${status}`;
    this.body = body;
  }
}

function token() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

async function api(path, { method = "GET", json, body, headers = {}, signal } = {}) {
  const h = { ...headers };
  if (token()) h.Authorization = `Bearer ${token()}`;
  if (json !== undefined) {
    h["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  const r = await fetch(path, { method, headers: h, body, signal });
  if (r.ok) {
    notice.clearAuth();
    return r.status === 204 ? null : r.headers.get("Content-Type")?.includes("json") ? r.json() : r;
  }
  let problem = null;
  try {
    problem = await r.json();
  } catch {
    /* not JSON */
  }
  const err = new Problem(r.status, problem);
  err.retryAfter = Number(r.headers.get("Retry-After")) || 0;
  if (r.status === 401 || r.status === 403) notice.auth(err);
  throw err;
}

// -- messages ------------------------------------------------------------------

const notice = {
  authShown: false,
  show(text) {
    $("notice").textContent = text;
    $("notice").hidden = false;
  },
  hide() {
    $("notice").hidden = true;
  },
  auth(err) {
    this.authShown = true;
    if (err.status === 401) {
      this.show(
        token()
          ? `The token was refused (${err.code}): ${err.message}`
          : "This daemon requires an API token. Paste yours into the token field above " +
              "(an operator creates one with: ingestd token create --tenant NAME).",
      );
    } else {
      this.show(`Your token may not do this: ${err.message}`);
    }
  },
  clearAuth() {
    if (this.authShown) {
      this.authShown = false;
      this.hide();
    }
  },
};

function announce(text) {
  // Cleared first so that the same words twice are read twice.
  const region = $("announce");
  region.textContent = "";
  setTimeout(() => (region.textContent = text), 50);
}

function mib(n) {
  return `${(n / 1048576).toFixed(1)} MiB`;
}

function seconds(s) {
  if (!Number.isFinite(s)) return "";
  if (s < 90) return `${Math.ceil(s)} s left`;
  if (s < 5400) return `${Math.round(s / 60)} min left`;
  return `${(s / 3600).toFixed(1)} h left`;
}

// -- remembered uploads ------------------------------------------------------------

const resume = {
  all() {
    try {
      return JSON.parse(localStorage.getItem(RESUME_KEY)) || {};
    } catch {
      return {};
    }
  },
  get(fp) {
    return this.all()[fp];
  },
  put(fp, record) {
    const all = this.all();
    all[fp] = record;
    localStorage.setItem(RESUME_KEY, JSON.stringify(all));
  },
  drop(fp) {
    const all = this.all();
    delete all[fp];
    localStorage.setItem(RESUME_KEY, JSON.stringify(all));
    handles.drop(fp);
  },
};

// File handles (File System Access API) in IndexedDB, by fingerprint.
const handles = {
  supported: typeof window.showOpenFilePicker === "function" && "indexedDB" in window,
  db: null,
  async open() {
    if (this.db) return this.db;
    this.db = await new Promise((resolve, reject) => {
      const req = indexedDB.open("ingestd", 1);
      req.onupgradeneeded = () => req.result.createObjectStore("handles");
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
    return this.db;
  },
  async run(mode, fn) {
    const db = await this.open();
    return new Promise((resolve, reject) => {
      const tx = db.transaction("handles", mode);
      const req = fn(tx.objectStore("handles"));
      tx.oncomplete = () => resolve(req?.result);
      tx.onerror = () => reject(tx.error);
    });
  },
  put(fp, handle) {
    return this.supported ? this.run("readwrite", (s) => s.put(handle, fp)) : null;
  },
  get(fp) {
    return this.supported ? this.run("readonly", (s) => s.get(fp)) : null;
  },
  drop(fp) {
    if (this.supported) this.run("readwrite", (s) => s.delete(fp)).catch(() => {});
  },
};

// -- one upload ---------------------------------------------------------------------

let serverInfo = null;

async function info() {
  serverInfo ??= await api("/v1/info");
  return serverInfo;
}

function hashFile(file, chunking, onChunks) {
  return new Promise((resolve, reject) => {
    const worker = new Worker("/static/worker.js", { type: "module" });
    const found = [];
    worker.onmessage = ({ data }) => {
      if (data.type === "chunks") {
        found.push(...data.chunks);
        onChunks(data.chunks);
      } else if (data.type === "done") {
        worker.terminate();
        resolve(found);
      } else {
        worker.terminate();
        reject(new Error(data.message));
      }
    };
    worker.onerror = (e) => {
      worker.terminate();
      reject(new Error(e.message || "the hashing worker failed"));
    };
    worker.postMessage({ file, chunking });
  });
}

class Upload {
  constructor(file, handle = null) {
    this.file = file;
    this.handle = handle;
    this.chunks = []; // {offset, size, hash, state, tries, cell}
    this.state = "queued";
    this.paused = false;
    this.cancelled = false;
    this.inflight = new Map(); // index -> AbortController
    this.sentBytes = 0;
    this.doneBytes = 0;
    this.speed = 0;
    this.lastSample = { t: performance.now(), sent: 0 };
    this.milestone = 0;
    this.el = $("upload-template").content.firstElementChild.cloneNode(true);
    this.el.querySelector(".name").textContent = file.name;
    this.grid = this.el.querySelector(".grid");
    this.grid.setAttribute("aria-label", `chunks of ${file.name}`);
    this.el.querySelector(".pause").onclick = () => this.pause();
    this.el.querySelector(".resume").onclick = () => this.resume();
    this.el.querySelector(".retry").onclick = () => this.retryFailed();
    this.el.querySelector(".cancel").onclick = () => this.cancel();
    this.el.querySelector("progress").setAttribute("aria-label", `progress of ${file.name}`);
    $("queue").append(this.el);
    $("queue-empty").hidden = true;
    this.phase("waiting to start");
    this.draw();
  }

  phase(text) {
    this.el.querySelector(".phase").textContent = text;
    this.el.dataset.state = this.state;
  }

  outcome(text, kind) {
    const el = this.el.querySelector(".outcome");
    el.textContent = text;
    el.className = `outcome ${kind}`;
  }

  cellState(chunk, state) {
    chunk.state = state;
    chunk.cell.className = `cell ${state}`;
    chunk.cell.title = `chunk ${chunk.index}: ${state}, ${chunk.size} bytes`;
  }

  draw() {
    const size = this.file.size;
    const done = this.doneBytes;
    const bar = this.el.querySelector("progress");
    bar.value = size ? (100 * done) / size : this.state === "processing" ? 100 : 0;
    this.el.querySelector(".bytes").textContent = `${mib(done)} of ${mib(size)}`;
    const sending = this.state === "sending" && !this.paused;
    this.el.querySelector(".speed").textContent = sending ? `${mib(this.speed)}/s` : "";
    const left = size - done;
    this.el.querySelector(".eta").textContent =
      sending && this.speed > 0 ? seconds(left / this.speed) : "";
    const pct = size ? Math.floor((100 * done) / size / 25) * 25 : 0;
    if (pct > this.milestone && pct < 100) {
      this.milestone = pct;
      announce(`${this.file.name}: ${pct}% uploaded`);
    }
  }

  sample() {
    // Smoothed (exponentially weighted) send rate, sampled twice a second.
    const now = performance.now();
    const dt = (now - this.lastSample.t) / 1000;
    if (dt < 0.5) return;
    const rate = (this.sentBytes - this.lastSample.sent) / dt;
    this.speed = this.speed ? 0.7 * this.speed + 0.3 * rate : rate;
    this.lastSample = { t: now, sent: this.sentBytes };
  }

  addChunks(found) {
    // One trailing cell stands for the chunk being cut and hashed now.
    if (!this.hashingCell) {
      this.hashingCell = document.createElement("span");
      this.hashingCell.className = "cell hashing";
      this.hashingCell.title = "hashing";
      this.grid.append(this.hashingCell);
    }
    const fragment = document.createDocumentFragment();
    for (const [offset, size, hash] of found) {
      const chunk = { index: this.chunks.length, offset, size, hash, tries: 0 };
      chunk.cell = document.createElement("span");
      fragment.append(chunk.cell);
      this.chunks.push(chunk);
      this.cellState(chunk, "waiting");
    }
    this.grid.insertBefore(fragment, this.hashingCell);
  }

  async run() {
    try {
      const { chunking } = await info();
      this.state = "hashing";
      this.phase("hashing…");
      const found = await hashFile(this.file, chunking, (batch) => {
        this.addChunks(batch);
        this.el.querySelector(".bytes").textContent =
          `hashed ${mib(this.chunks.reduce((n, c) => n + c.size, 0))} of ${mib(this.file.size)}`;
      });
      this.hashingCell?.remove();
      if (this.cancelled) return;
      this.fingerprint = [
        this.file.name,
        this.file.size,
        this.file.lastModified,
        found[0]?.[2] ?? "empty",
      ].join("|");
      const missing = await this.open();
      const wanted = new Set(missing);
      for (const chunk of this.chunks) {
        if (!wanted.has(chunk.index)) {
          this.cellState(chunk, "present");
          this.doneBytes += chunk.size;
        }
      }
      this.state = "sending";
      this.phase(missing.length ? `sending ${missing.length} of ${this.chunks.length} chunks` : "all chunks already on the server");
      this.draw();
      await this.sendAll();
      if (this.cancelled) return;
      await this.complete();
    } catch (err) {
      if (this.cancelled) return;
      this.state = "failed";
      this.phase("failed");
      this.outcome(err.message, "failed");
      announce(`${this.file.name} failed: ${err.message}`);
    }
  }

  async open() {
    const known = resume.get(this.fingerprint);
    if (known) {
      try {
        const status = await api(`/v1/uploads/${known.uploadId}`);
        if (status.state === "open" && status.total_chunks === this.chunks.length) {
          this.uploadId = known.uploadId;
          this.el.dataset.uploadId = known.uploadId;
          this.resumed = true;
          announce(`${this.file.name}: resuming an earlier upload`);
          return status.missing;
        }
      } catch (err) {
        if (err.status === 401 || err.status === 403) throw err;
      }
      resume.drop(this.fingerprint);
    }
    const created = await api("/v1/uploads", {
      method: "POST",
      json: {
        filename: this.file.name,
        size: this.file.size,
        chunks: this.chunks.map((c) => ({ hash: c.hash, size: c.size })),
      },
    });
    this.uploadId = created.id;
    this.el.dataset.uploadId = created.id;
    resume.put(this.fingerprint, {
      uploadId: created.id,
      name: this.file.name,
      size: this.file.size,
      lastModified: this.file.lastModified,
      saved: Date.now(),
    });
    if (this.handle) handles.put(this.fingerprint, this.handle);
    return created.missing;
  }

  parallel() {
    return Math.max(1, Math.min(32, Number($("parallel").value) || 5));
  }

  // Sends every waiting chunk, `parallel()` at a time; resolves once none is
  // waiting or sending (some may have failed for good).
  sendAll() {
    return new Promise((resolve) => {
      this.wake = () => {
        if (this.cancelled) return resolve();
        if (!this.paused) {
          const target = this.runBytes();
          let run = [];
          let runBytes = 0;
          for (const chunk of this.chunks) {
            if (this.inflight.size >= this.parallel()) break;
            const ready = chunk.state === "waiting" && !chunk.retryAt;
            if (run.length && (!ready || runBytes + chunk.size > target)) {
              this.send(run);
              run = [];
              runBytes = 0;
            }
            if (ready && this.inflight.size < this.parallel()) {
              run.push(chunk);
              runBytes += chunk.size;
            }
          }
          if (run.length && this.inflight.size < this.parallel()) this.send(run);
        }
        const busy = this.chunks.some(
          (c) => c.state === "sending" || (c.state === "waiting" && !this.paused) || c.retryAt,
        );
        if (!busy && !this.paused) resolve();
        this.sample();
        this.draw();
      };
      this.ticker = setInterval(() => this.wake(), 250);
      this.wake();
    }).finally(() => clearInterval(this.ticker));
  }

  // Consecutive waiting chunks go in one request (`?from=I&count=N`): at most
  // RUN_BYTES, spread over the parallel requests when little is left.
  runBytes() {
    const waiting = this.chunks.reduce((n, c) => n + (c.state === "waiting" ? c.size : 0), 0);
    return Math.max(MIN_RUN_BYTES, Math.min(RUN_BYTES, Math.ceil(waiting / this.parallel())));
  }

  async send(run) {
    const control = new AbortController();
    const first = run[0];
    const last = run[run.length - 1];
    this.inflight.set(first.index, control);
    for (const chunk of run) this.cellState(chunk, "sending");
    const done = (chunk) => {
      this.cellState(chunk, "done");
      this.sentBytes += chunk.size;
      this.doneBytes += chunk.size;
    };
    try {
      // A Blob body: Chromium streams it from the file, several times faster
      // than an ArrayBuffer body (which it copies through its IPC in pieces).
      const bytes = this.file.slice(first.offset, last.offset + last.size);
      const ack = await api(`/v1/uploads/${this.uploadId}/chunks?from=${first.index}&count=${run.length}`, {
        method: "PUT",
        body: bytes,
        headers: { "Content-Type": "application/octet-stream" },
        signal: control.signal,
      });
      run.forEach((chunk, i) => {
        const stored = ack.chunks[i];
        if (!stored || stored.index !== chunk.index || stored.hash !== chunk.hash) {
          throw new Error(`the server stored ${stored?.hash} for chunk ${chunk.index}`);
        }
      });
      run.forEach(done);
    } catch (err) {
      // The whole chunks a failed run kept need not be sent again.
      const kept = new Set(err.body?.kept_chunks || []);
      const rest = run.filter((chunk) => !kept.has(chunk.index));
      run.filter((chunk) => kept.has(chunk.index)).forEach(done);
      if (control.signal.aborted) {
        for (const chunk of rest) this.cellState(chunk, "waiting"); // paused or cancelled: sent again on resume
      } else {
        const delay = err.retryAfter ? err.retryAfter * 1000 : RETRIES[first.tries];
        const lasting = err.status && err.status < 500 && err.status !== 429 && err.status !== 408;
        for (const chunk of rest) {
          this.cellState(chunk, "failed");
          chunk.error = err.message;
        }
        if (delay !== undefined && !lasting) {
          for (const chunk of rest) {
            chunk.tries += 1;
            chunk.retryAt = true;
          }
          setTimeout(() => {
            for (const chunk of rest) {
              chunk.retryAt = false;
              if (chunk.state === "failed") this.cellState(chunk, "waiting");
            }
            this.wake?.();
          }, delay);
        } else {
          this.showFailed();
        }
      }
    } finally {
      this.inflight.delete(first.index);
      this.wake?.();
    }
  }

  showFailed() {
    const failed = this.chunks.filter((c) => c.state === "failed" && !c.retryAt);
    const button = this.el.querySelector(".retry");
    button.hidden = failed.length === 0;
    if (failed.length) {
      this.phase(`${failed.length} chunk(s) failed`);
      this.outcome(`Chunk ${failed[0].index}: ${failed[0].error}`, "failed");
    }
  }

  retryFailed() {
    for (const chunk of this.chunks) {
      if (chunk.state === "failed") {
        chunk.tries = 0;
        this.cellState(chunk, "waiting");
      }
    }
    this.el.querySelector(".retry").hidden = true;
    this.outcome("", "");
    if (this.state === "sending") {
      this.phase("sending");
      this.wake?.();
    } else if (this.state === "stalled") {
      this.state = "sending";
      this.phase("sending");
      this.sendAll().then(() => this.complete()).catch((err) => this.outcome(err.message, "failed"));
    }
  }

  pause() {
    this.paused = true;
    for (const control of this.inflight.values()) control.abort();
    this.el.querySelector(".pause").hidden = true;
    this.el.querySelector(".resume").hidden = false;
    this.phase("paused");
    announce(`${this.file.name} paused`);
  }

  resume() {
    this.paused = false;
    this.el.querySelector(".pause").hidden = false;
    this.el.querySelector(".resume").hidden = true;
    this.phase("sending");
    announce(`${this.file.name} resumed`);
    this.wake?.();
  }

  async cancel() {
    if (!window.confirm(`Cancel the upload of ${this.file.name}?`)) return;
    this.cancelled = true;
    for (const control of this.inflight.values()) control.abort();
    this.wake?.();
    if (this.uploadId && this.state !== "processing") {
      await api(`/v1/uploads/${this.uploadId}`, { method: "DELETE" }).catch(() => {});
    }
    if (this.fingerprint) resume.drop(this.fingerprint);
    this.state = "cancelled";
    this.phase("cancelled");
    this.el.querySelector(".actions").hidden = true;
    announce(`${this.file.name} cancelled`);
    showUnfinished();
  }

  async complete() {
    if (this.chunks.some((c) => c.state !== "done" && c.state !== "present")) {
      this.state = "stalled";
      this.showFailed();
      return;
    }
    this.state = "processing";
    this.phase("validating…");
    this.el.querySelector(".pause").hidden = true;
    this.el.querySelector(".resume").hidden = true;
    this.el.querySelector(".cancel").hidden = true;
    this.draw();
    announce(`${this.file.name}: all bytes sent, validating`);
    const accepted = await api(`/v1/uploads/${this.uploadId}/complete`, { method: "POST" });
    resume.drop(this.fingerprint);
    let job = { state: "queued" };
    while (job.state === "queued" || job.state === "running") {
      job = await api(`/v1/jobs/${accepted.job_id}?wait=${JOB_WAIT}`);
    }
    this.el.querySelector(".actions").hidden = true;
    if (job.verdict === "accepted") {
      this.state = "accepted";
      this.phase("accepted");
      const found = findings(job.results, null);
      this.outcome(`Accepted${found ? `: ${found}` : ""}`, "accepted");
      announce(`${this.file.name} accepted`);
    } else {
      this.state = "rejected";
      this.phase("rejected");
      const reason = job.error || rejectionReason(job.results) || "rejected by a plugin";
      this.outcome(`Rejected: ${reason}`, "rejected");
      announce(`${this.file.name} rejected: ${reason}`);
    }
    this.el.dataset.state = this.state;
    this.el.dataset.fileId = job.file_id;
    files.refresh();
  }
}

function rejectionReason(results) {
  for (const [plugin, stages] of Object.entries(results || {})) {
    for (const out of Object.values(stages || {})) {
      if (out && out.ok === false) return `${plugin}: ${out.reason}`;
    }
  }
  return "";
}

// What the plugins found, in words: rows and columns, tensors and parameters,
// PII counts, the virus scan.
function findings(results, described) {
  const parts = [];
  const d = described || {};
  const r = results || {};
  const data = d.datasets || r.datasets?.describe;
  if (data?.rows !== undefined) {
    const cols = Array.isArray(data.columns) ? `, ${data.columns.length} columns` : "";
    parts.push(`${data.rows.toLocaleString("en")} rows${cols}`);
  }
  const model = d.models || r.models?.describe;
  if (model?.tensors !== undefined) {
    const params = model.parameters !== undefined ? `, ${model.parameters.toLocaleString("en")} parameters` : "";
    parts.push(`${model.tensors} tensors${params}`);
  }
  const pii = r.pii?.scan?.found;
  if (pii) {
    const hits = Object.entries(pii).filter(([, n]) => n > 0);
    parts.push(hits.length ? `PII: ${hits.map(([k, n]) => `${n} ${k}`).join(", ")}` : "no PII found");
  }
  const av = r.clamav?.scan;
  if (av) parts.push(av.disabled ? "virus scan off" : av.ok ? "no virus found" : `virus: ${av.reason}`);
  return parts.join("; ");
}

// -- the queue ------------------------------------------------------------------------

const queue = [];
let running = false;

function add(file, handle = null) {
  queue.push(new Upload(file, handle));
  pump();
}

async function pump() {
  if (running) return;
  running = true;
  try {
    while (queue.length) {
      const upload = queue.shift();
      if (!upload.cancelled) await upload.run();
    }
  } finally {
    running = false;
    showUnfinished();
  }
}

async function showUnfinished() {
  const active = new Set(
    [...document.querySelectorAll(".upload")].map((el) => el.querySelector(".name").textContent),
  );
  const list = $("unfinished-list");
  list.replaceChildren();
  for (const [fp, record] of Object.entries(resume.all())) {
    if (active.has(record.name)) continue;
    const li = document.createElement("li");
    li.textContent = `${record.name} (${mib(record.size)}) `;
    const handle = await handles.get(fp)?.catch(() => null);
    if (handle) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = `Resume ${record.name}`;
      button.onclick = async () => {
        if ((await handle.requestPermission({ mode: "read" })) !== "granted") return;
        li.remove();
        add(await handle.getFile(), handle);
      };
      li.append(button);
    } else {
      li.append("— choose the same file again to resume it");
    }
    const forget = document.createElement("button");
    forget.type = "button";
    forget.className = "secondary";
    forget.textContent = "Forget";
    forget.onclick = () => {
      resume.drop(fp);
      li.remove();
    };
    li.append(" ", forget);
    list.append(li);
  }
  $("unfinished").hidden = list.children.length === 0;
}

// -- the files list -----------------------------------------------------------------

const FILES_PAGE = 100;

const files = {
  next: null, // the `after` of the next page, when there is one

  // The first page again; each file's findings come with it (`results=true`):
  // one request for the whole list, not one per row.
  async refresh() {
    const page = await this.fetch("");
    if (!page) return;
    $("files").querySelector("tbody").replaceChildren(...page.files.map((f) => this.row(f)));
    $("files-empty").hidden = page.files.length > 0;
  },

  // The next page, added below the rows shown.
  async more() {
    if (!this.next) return;
    const page = await this.fetch(this.next);
    if (page) $("files").querySelector("tbody").append(...page.files.map((f) => this.row(f)));
  },

  async fetch(after) {
    const query = `limit=${FILES_PAGE}&results=true${after ? `&after=${encodeURIComponent(after)}` : ""}`;
    let page;
    try {
      page = await api(`/v1/files?${query}`);
    } catch (err) {
      if (err.status !== 401 && err.status !== 403) notice.show(`Listing files failed: ${err.message}`);
      return null;
    }
    this.next = page.next;
    $("more-files").hidden = !page.next;
    return page;
  },

  row(f) {
    const tr = document.createElement("tr");
    tr.dataset.fileId = f.id;
    const cell = (text, cls, label) => {
      const td = document.createElement("td");
      td.textContent = text;
      if (cls) td.className = cls;
      if (label) td.dataset.label = label; // shown before the value at phone width
      tr.append(td);
      return td;
    };
    cell(f.filename, "name");
    cell(mib(f.size), "size", "Size");
    cell(f.detection?.format || f.detection?.kind || "—", "type", "Type");
    const state = cell(
      f.state === "rejected" ? `rejected: ${f.reason}` : f.state,
      `state state-${f.state}`,
      "State",
    );
    state.dataset.state = f.state;
    cell(findings(f.results, f.described) || "", "findings", "Findings");
    const actions = cell("", "actions");
    if (f.state !== "rejected") {
      const dl = document.createElement("button");
      dl.type = "button";
      dl.textContent = "Download";
      dl.setAttribute("aria-label", `Download ${f.filename}`);
      dl.onclick = () => download(f);
      actions.append(dl, " ");
    }
    const del = document.createElement("button");
    del.type = "button";
    del.className = "delete";
    del.textContent = "Delete";
    del.setAttribute("aria-label", `Delete ${f.filename}`);
    del.onclick = async () => {
      if (!window.confirm(`Delete ${f.filename}? This cannot be undone.`)) return;
      await api(`/v1/files/${f.id}`, { method: "DELETE" }).catch((err) => notice.show(err.message));
      announce(`${f.filename} deleted`);
      this.refresh();
    };
    actions.append(del);
    return tr;
  },
};

async function download(f) {
  // fetch, not a link: the request needs the token header.
  const r = await api(`/v1/files/${f.id}/content`).catch((err) => notice.show(err.message));
  if (!r) return;
  const url = URL.createObjectURL(await r.blob());
  const a = document.createElement("a");
  a.href = url;
  a.download = f.filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

// -- wiring -----------------------------------------------------------------------

function init() {
  $("token").value = token();
  $("token-form").onsubmit = (e) => {
    e.preventDefault();
    localStorage.setItem(TOKEN_KEY, $("token").value.trim());
    serverInfo = null;
    notice.hide();
    announce("Token saved");
    files.refresh();
  };
  $("token-clear").onclick = () => {
    localStorage.removeItem(TOKEN_KEY);
    $("token").value = "";
    announce("Token forgotten");
    files.refresh();
  };
  $("parallel").value = localStorage.getItem(PARALLEL_KEY) || "5";
  $("parallel").onchange = () => localStorage.setItem(PARALLEL_KEY, String($("parallel").value));
  $("picker").onchange = (e) => {
    for (const file of e.target.files) add(file);
    e.target.value = "";
  };
  const drop = $("drop");
  drop.onkeydown = (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      $("picker").click();
    }
  };
  drop.onclick = () => $("picker").click();
  $("choose").onclick = () => $("picker").click();
  drop.ondragover = (e) => {
    e.preventDefault();
    drop.classList.add("over");
  };
  drop.ondragleave = () => drop.classList.remove("over");
  drop.ondrop = async (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    for (const item of e.dataTransfer.items) {
      const handle = handles.supported && item.getAsFileSystemHandle ? await item.getAsFileSystemHandle() : null;
      const file = item.getAsFile();
      if (file) add(file, handle?.kind === "file" ? handle : null);
    }
  };
  if (handles.supported) {
    const pick = $("pick-handles");
    pick.hidden = false;
    pick.onclick = async () => {
      let picked;
      try {
        picked = await window.showOpenFilePicker({ multiple: true });
      } catch {
        return; // the user closed the picker
      }
      for (const handle of picked) add(await handle.getFile(), handle);
    };
    $("fs-note").textContent =
      "Files chosen with “resumable after reload” can be resumed after a reload without choosing them again.";
  } else {
    $("fs-note").textContent =
      "This browser cannot reopen files after a reload: choose the same file again and its upload resumes where it stopped.";
  }
  $("refresh").onclick = () => files.refresh();
  $("more-files").onclick = () => files.more();
  showUnfinished();
  files.refresh();
  document.body.dataset.ready = "true"; // for tests and scripts: handlers are in place
}

init();
