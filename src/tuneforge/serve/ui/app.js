// tuneforge's web UI: chat with any served model (streamed), upload training data, start and follow fine-tuning
// jobs. Plain JavaScript against the server's own OpenAI-compatible API; no build step, nothing from a CDN.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { key: sessionStorage.getItem("tuneforge-key") || "", conversation: [], job: null, timer: null };

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (state.key) headers.Authorization = `Bearer ${state.key}`;
  const response = await fetch(`/v1${path}`, { ...options, headers });
  if (!response.ok) {
    let message = `${response.status}`;
    try { message = (await response.json()).error.message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

const json = async (path, options) => (await api(path, options)).json();

function element(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;  // text only: model output is never HTML
  if (cls) node.className = cls;
  return node;
}

function show(tab) {
  for (const name of ["login", "chat", "jobs", "reports", "annotate"]) $(name).hidden = name !== tab;
  for (const button of document.querySelectorAll("header nav button")) {
    button.classList.toggle("active", button.dataset.tab === tab);
  }
  if (tab === "jobs") refreshJobs();
}

async function signIn(event) {
  if (event) event.preventDefault();
  state.key = $("key").value || state.key;
  try {
    const models = (await json("/models")).data.map((m) => m.id);
    sessionStorage.setItem("tuneforge-key", state.key);
    fillModels(models);
    show("chat");
  } catch (error) {
    $("login-error").textContent = `Sign-in failed: ${error.message}`;
    show("login");
  }
}

function fillModels(models) {
  $("who").textContent = `${models.length} model${models.length === 1 ? "" : "s"} served`;
  for (const select of [$("model"), $("job-model"), $("report-model")]) {
    const chosen = select.value;
    select.replaceChildren(...models.map((id) => element("option", id)));
    if (models.includes(chosen)) select.value = chosen;
  }
  const bases = models.filter((id) => !id.startsWith("ft:"));
  if (bases.length) $("job-model").value = bases[bases.length - 1];
}

function addMessage(role, text) {
  const node = element("div", undefined, `msg ${role}`);
  node.append(element("b", `${role}: `), element("span", text));
  $("messages").append(node);
  return node;
}

async function send(event) {
  event.preventDefault();
  const text = $("prompt").value.trim();
  if (!text) return;
  $("prompt").value = "";
  state.conversation.push({ role: "user", content: text });
  addMessage("user", text);
  const answer = addMessage("assistant", "");
  const messages = ($("system").value ? [{ role: "system", content: $("system").value }] : []).concat(state.conversation);
  $("send").disabled = true;
  try {
    const response = await api("/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model: $("model").value, messages, stream: true, max_tokens: 256 }),
    });
    const text = await readStream(response, answer);
    state.conversation.push({ role: "assistant", content: text });
  } catch (error) {
    answer.append(element("span", ` [error: ${error.message}]`, "bad"));
  } finally {
    $("send").disabled = false;
  }
}

async function readStream(response, node) {
  // Server-sent events: "data: {chunk}" lines, then "data: [DONE]"; the first chunk may carry citations.
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const span = node.querySelector("span");
  let buffer = "", text = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    const events = buffer.split("\n\n");
    buffer = events.pop();
    for (const event of events) {
      const data = event.replace(/^data: /, "");
      if (data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      if (chunk.citations) showSources(node, chunk.citations);
      if (chunk.classification) showProbabilities(node, chunk.classification);
      const piece = (chunk.choices[0] && chunk.choices[0].delta.content) || "";
      text += piece;
      span.textContent = text;
    }
  }
  node.dataset.done = "true";
  return text;
}

function showProbabilities(node, classification) {
  // A classifier's answer: every class with its probability, likeliest first.
  const list = element("div", undefined, "sources probabilities");
  const shares = Object.entries(classification.probabilities).sort((a, b) => b[1] - a[1]);
  for (const [label, p] of shares) list.append(element("div", `${label} ${p.toFixed(3)}`));
  node.after(list);
}

function showSources(node, citations) {
  const list = element("div", undefined, "sources");
  for (const c of citations) list.append(element("div", `[${c.index}] ${c.source}`));
  node.after(list);
}

async function upload(event) {
  event.preventDefault();
  const file = $("file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("purpose", "fine-tune");
  form.append("file", file);
  $("upload-result").textContent = "Checking ...";
  try {
    const record = await json("/files", { method: "POST", body: form });
    const ok = record.status === "processed";
    const result = element("div", undefined, ok ? "good" : "bad");
    result.id = "validation";
    result.append(element("b", `${record.filename}: ${record.status}`), element("div", record.status_details || ""));
    $("upload-result").replaceChildren(result);
    $("job-form").hidden = !ok;
    $("job-form").dataset.file = record.id;
  } catch (error) {
    $("upload-result").textContent = `Upload failed: ${error.message}`;
  }
}

async function createJob(event) {
  event.preventDefault();
  const epochs = $("epochs").value.trim();
  const body = { model: $("job-model").value, training_file: $("job-form").dataset.file };
  if ($("suffix").value) body.suffix = $("suffix").value;
  if (epochs && epochs !== "auto") body.hyperparameters = { n_epochs: Number(epochs) };
  try {
    const options = $("options").value.trim();
    body.tuneforge = { config: options ? JSON.parse(options) : {}, evaluate: $("evaluate").checked };
    const job = await json("/fine_tuning/jobs", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    await refreshJobs();
    follow(job.id);
  } catch (error) {
    $("upload-result").append(element("div", `Could not start: ${error.message}`, "bad"));
  }
}

async function refreshJobs() {
  const jobs = (await json("/fine_tuning/jobs?limit=50")).data;
  const rows = jobs.map((job) => {
    const row = element("tr", undefined, `job${job.id === state.job ? " selected" : ""}`);
    row.dataset.id = job.id;
    row.append(element("td", job.id, "id"), element("td", job.status, `status-${job.status}`),
      element("td", job.fine_tuned_model || ""));
    row.onclick = () => follow(job.id);
    return row;
  });
  $("job-list").tBodies[0].replaceChildren(...rows);
}

function follow(id) {
  state.job = id;
  state.settled = null;
  clearInterval(state.timer);
  showJob();
  state.timer = setInterval(showJob, 2000);
}

async function showJob() {
  const id = state.job;
  const job = await json(`/fine_tuning/jobs/${id}`);
  const events = (await json(`/fine_tuning/jobs/${id}/events?limit=1000`)).data.reverse();
  const detail = $("job-detail");
  const head = element("h2", `${job.id}: `);
  head.append(element("span", job.status, `status-${job.status}`));
  head.id = "job-status";
  const facts = element("p", [
    job.fine_tuned_model ? `model ${job.fine_tuned_model}` : "",
    job.trained_tokens ? `${job.trained_tokens} tokens trained` : "",
    job.estimated_finish ? `estimated finish ${new Date(job.estimated_finish * 1000).toLocaleTimeString()}` : "",
    job.error ? `error: ${job.error.message}` : "",
  ].filter(Boolean).join(" · "), "muted");
  const children = [head, facts, curve(events)];
  if (job.status === "succeeded" && events.some((e) => e.data && e.data.report)) {
    const report = element("button", "Show report");
    report.id = "job-report";
    report.onclick = () => showReport(`/fine_tuning/jobs/${id}/report`, `report of job ${id}`);
    children.push(report);
  }
  if (["queued", "running", "paused"].includes(job.status)) {
    const cancel = element("button", "Cancel job");
    cancel.id = "cancel";
    cancel.onclick = async () => { await api(`/fine_tuning/jobs/${id}/cancel`, { method: "POST" }); showJob(); };
    children.push(cancel);
  }
  const log = element("div", undefined);
  log.id = "events";
  for (const e of events) log.append(element("div", `${new Date(e.created_at * 1000).toLocaleTimeString()}  ${e.message}`, e.level === "error" ? "bad" : ""));
  children.push(log);
  detail.replaceChildren(...children);
  if (["succeeded", "failed", "cancelled"].includes(job.status)) {
    clearInterval(state.timer);
    if (state.settled !== id) {  // the last events land just after the status: draw the job once more
      state.settled = id;
      setTimeout(showJob, 2000);
    }
    fillModels((await json("/models")).data.map((m) => m.id));
  }
  refreshJobs();
}

async function showReport(path, title) {
  // A run's report.html, in a sandboxed frame: it shows data and runs nothing.
  show("reports");
  $("report-title").textContent = `Loading the ${title} ...`;
  try {
    $("report").srcdoc = await (await api(path)).text();
    $("report").hidden = false;
    $("report-title").textContent = title;
  } catch (error) {
    $("report").hidden = true;
    $("report-title").textContent = `No report: ${error.message}`;
  }
}

function curve(events) {
  // The training loss per step, from the metrics events, as an SVG polyline.
  const points = events.filter((e) => e.type === "metrics" && e.data && e.data.train_loss != null)
    .map((e) => [e.data.step, e.data.train_loss]);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "curve");
  svg.setAttribute("viewBox", "0 0 600 180");
  svg.id = "loss-curve";
  if (points.length < 2) return svg;
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const scaled = points.map(([x, y]) => `${20 + 560 * (x - x0) / (x1 - x0 || 1)},${160 - 140 * (y - y0) / (y1 - y0 || 1)}`);
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", scaled.join(" "));
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", "#1f6feb");
  line.setAttribute("stroke-width", "2");
  const label = document.createElementNS("http://www.w3.org/2000/svg", "text");
  label.setAttribute("x", "24");
  label.setAttribute("y", "16");
  label.setAttribute("font-size", "12");
  label.textContent = `training loss ${y1.toFixed(3)} → ${ys[ys.length - 1].toFixed(3)} (step ${x1})`;
  svg.append(line, label);
  return svg;
}

// Annotate: two answers side by side, one judgement per click or key press
async function nextItem() {
  const annotator = $("annotator").value.trim();
  if (!annotator) { $("annotate-status").textContent = "Enter your name first."; return; }
  localStorage.setItem("tuneforge-annotator", annotator);
  try {
    const item = await json(`/annotations/next?annotator=${encodeURIComponent(annotator)}`);
    state.item = item.item;
    $("annotate-item").hidden = !item.item;
    $("annotate-status").textContent = item.item
      ? `Prompt ${item.done + 1} of ${item.total} (answers by ${item.model})`
      : `All ${item.total} prompts judged by ${annotator}. Thank you!`;
    if (!item.item) return;
    $("annotate-prompt").replaceChildren(...item.prompt.map((m) => {
      const line = element("div");
      line.append(element("b", `${m.role}: `), element("span", m.content));
      return line;
    }));
    $("answer-left").textContent = item.left;
    $("answer-right").textContent = item.right;
  } catch (error) {
    $("annotate-status").textContent = `No annotation session: ${error.message}`;
  }
}

async function judge(judgement) {
  if (!state.item) return;
  const body = { item: state.item, annotator: $("annotator").value.trim(), judgement };
  state.item = null;
  await api("/annotations", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  await nextItem();
}

async function agreement() {
  const facts = await json("/annotations/summary");
  const lines = Object.entries(facts.annotators).map(([name, counts]) =>
    `${name}: ${Object.entries(counts).map(([k, v]) => `${k} ${v}`).join(", ")}`);
  for (const pair of facts.agreement) {
    lines.push(`${pair.annotators.join(" & ")}: ${pair.items} prompts judged by both, agreement ${pair.agreement}, Cohen's kappa ${pair.kappa ?? "n/a"}`);
  }
  $("annotate-agreement").textContent = lines.join("\n") || "No judgements yet.";
}

const KEYS = { "1": "left", ArrowLeft: "left", "2": "right", ArrowRight: "right", t: "tie", b: "both_bad", s: "skip" };
document.addEventListener("keydown", (e) => {
  if ($("annotate").hidden || e.target.tagName === "INPUT" || !KEYS[e.key]) return;
  e.preventDefault();
  judge(KEYS[e.key]);
});
for (const button of document.querySelectorAll("[data-judgement]")) button.onclick = () => judge(button.dataset.judgement);
$("annotate-start").onclick = nextItem;
$("annotate-summary").onclick = agreement;
$("annotator").value = localStorage.getItem("tuneforge-annotator") || "";

$("login-form").onsubmit = signIn;
$("chat-form").onsubmit = send;
$("prompt").onkeydown = (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("chat-form").requestSubmit(); } };
$("reset").onclick = () => { state.conversation = []; $("messages").replaceChildren(); };
$("upload-form").onsubmit = upload;
$("show-report").onclick = () => {
  const model = $("report-model").value;
  showReport(`/models/${encodeURIComponent(model).replace(/%2F/g, "/")}/report`, `report of ${model}`);
};
$("job-form").onsubmit = createJob;
for (const button of document.querySelectorAll("header nav button")) button.onclick = () => show(button.dataset.tab);
if (state.key) signIn(); else show("login");
