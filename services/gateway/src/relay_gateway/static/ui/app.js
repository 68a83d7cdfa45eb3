// The /ui page: live tail of one topic (status, messages, gaps, pause, clear) and a publish
// form that posts to ingest through CORS. Uses the reusable client in /ui/relay.js.
import { RelaySubscription } from "/ui/relay.js";

const MAX_ITEMS = 2000; // the list keeps the newest items; older ones leave the DOM

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const token = params.get("token");
const ingestUrl = (
  document.querySelector('meta[name="relay-public-ingest-url"]').content ||
  `${location.protocol}//${location.hostname}:8080`
).replace(/\/+$/, "");

const list = $("messages");
const statusEl = $("status");
let subscription = null;
let paused = false;
let held = []; // items that arrived while paused
let shown = 0;

function setStatus(state) {
  statusEl.textContent = state;
  statusEl.dataset.state = state;
}

function nearBottom() {
  return list.scrollHeight - list.scrollTop - list.clientHeight < 40;
}

function messageElement(envelope) {
  const item = document.createElement("li");
  item.className = "message";
  item.dataset.id = envelope.id;
  const meta = document.createElement("div");
  meta.className = "meta";
  const id = document.createElement("span");
  id.className = "id";
  id.textContent = envelope.id;
  const time = document.createElement("time");
  const moment = new Date(envelope.ts);
  time.dateTime = moment.toISOString();
  time.textContent = moment.toLocaleString(undefined, { hour12: false }) +
    `.${String(envelope.ts % 1000).padStart(3, "0")}`;
  meta.append(id, time);
  const payload = document.createElement("pre");
  payload.className = "payload";
  payload.textContent = JSON.stringify(envelope.payload, null, 2);
  item.append(meta, payload);
  if (envelope.headers && Object.keys(envelope.headers).length) {
    const headers = document.createElement("div");
    headers.className = "headers";
    headers.textContent = `headers ${JSON.stringify(envelope.headers)}`;
    item.append(headers);
  }
  return item;
}

function gapElement(gap) {
  const item = document.createElement("li");
  item.className = "gap";
  item.dataset.from = gap.from;
  item.textContent = `gap (${gap.reason}): messages before ${gap.from} are no longer retained`;
  return item;
}

function show(elements) {
  const stick = nearBottom();
  list.append(...elements);
  while (list.childElementCount > MAX_ITEMS) list.firstElementChild.remove();
  if (stick) list.scrollTop = list.scrollHeight;
  updateCount();
}

function add(element) {
  if (paused) {
    held.push(element);
    $("pause").textContent = `Resume (${held.length} new)`;
    return;
  }
  show([element]);
}

function updateCount() {
  shown = list.querySelectorAll(".message").length;
  $("count").textContent = shown ? `${shown} message${shown === 1 ? "" : "s"}` : "";
}

function subscribe(topic, since) {
  if (subscription) subscription.close();
  list.replaceChildren();
  held = [];
  updateCount();
  try {
    subscription = new RelaySubscription({ topic, since: since || null, token });
  } catch (error) {
    setStatus("idle");
    $("count").textContent = error.message;
    return;
  }
  subscription.addEventListener("status", (event) => setStatus(event.detail));
  subscription.addEventListener("message", (event) => add(messageElement(event.detail)));
  subscription.addEventListener("gap", (event) => add(gapElement(event.detail)));
  subscription.addEventListener("error", (event) => {
    $("count").textContent = `stopped: ${event.detail.code}: ${event.detail.message}`;
  });
  const query = new URLSearchParams(location.search);
  query.set("topic", topic);
  if (since) query.set("since", since); else query.delete("since");
  history.replaceState(null, "", `${location.pathname}?${query}`);
  subscription.start();
}

$("subscribe-form").addEventListener("submit", (event) => {
  event.preventDefault();
  subscribe($("topic").value.trim(), $("since").value.trim());
});

$("pause").addEventListener("click", () => {
  paused = !paused;
  $("pause").setAttribute("aria-pressed", String(paused));
  $("pause").textContent = paused ? "Resume" : "Pause";
  if (!paused && held.length) {
    show(held);
    held = [];
  }
});

$("clear").addEventListener("click", () => {
  list.replaceChildren();
  held = [];
  if (paused) $("pause").textContent = "Resume";
  updateCount();
});

async function publish() {
  const result = $("publish-result");
  result.className = "muted";
  const topic = subscription ? subscription.topic : $("topic").value.trim();
  let payload;
  try {
    payload = JSON.parse($("publish-payload").value);
  } catch (error) {
    result.className = "error";
    result.textContent = `invalid JSON: ${error.message}`;
    return;
  }
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  result.textContent = "publishing…";
  try {
    const response = await fetch(`${ingestUrl}/api/v1/messages`, {
      method: "POST", headers, body: JSON.stringify({ topic, payload }),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      result.className = "error";
      const error = body.error || {};
      result.textContent = `${response.status} ${error.code || ""}: ${error.message || ""}`;
      return;
    }
    result.textContent = `published ${body.id}`;
    result.dataset.id = body.id;
  } catch (error) {
    result.className = "error";
    result.textContent = `cannot reach ingest at ${ingestUrl}`;
  }
}

$("publish").addEventListener("click", publish);
$("publish-payload").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) publish();
});

const initial = params.get("topic");
if (initial) {
  $("topic").value = initial;
  $("since").value = params.get("since") || "";
  subscribe(initial, params.get("since"));
}
