// Live refresh of the webui pages from the JSON API (/v1/...). The pages are complete
// without it; this only keeps statuses, durations and logs current.
"use strict";

const TERMINAL = new Set(["complete", "failed", "aborted"]);

function text(value) {
  const span = document.createElement("span");
  span.textContent = value == null ? "" : String(value);
  return span.innerHTML;
}

function when(iso) {
  return iso ? iso.replace("T", " ").replace("+00:00", " UTC") : "-";
}

function duration(seconds) {
  if (seconds == null) return "-";
  if (seconds < 60) return seconds.toFixed(1) + " s";
  const total = Math.round(seconds);
  const h = Math.floor(total / 3600), m = Math.floor((total % 3600) / 60), s = total % 60;
  const mm = String(m).padStart(2, "0"), ss = String(s).padStart(2, "0");
  return h ? `${h}:${mm}:${ss}` : `${m}:${ss}`;
}

function stamp(seconds) {
  return new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 19);
}

async function getJSON(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  if (response.status === 401) {  // the session ended (multi_user): back to the login
    window.location.assign(`/accounts/login/?next=${encodeURIComponent(window.location.pathname)}`);
  }
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return [await response.json(), response];
}

async function refreshList(table) {
  const rows = table.tBodies[0].querySelectorAll("tr[data-id]").length;
  const [calcs, response] = await getJSON(`/v1/calc/list?limit=${Math.max(rows, 100)}`);
  if (calcs.length === 0) return;
  table.tBodies[0].innerHTML = calcs.map((c) => `<tr data-id="${c.id}">
      <td><a href="calc/${c.id}">${c.id}</a></td>
      <td><span class="status ${text(c.status)}">${text(c.status)}</span></td>
      <td>${text(c.owner)}</td><td>${text(c.description)}</td>
      <td>${when(c.start_time || c.created)}</td>
      <td class="num">${duration(c.duration)}</td></tr>`).join("");
  document.getElementById("total").textContent =
    `${response.headers.get("X-Total-Count")} recorded`;
  table.dataset.refreshed = new Date().toISOString();
}

async function refreshCalc(facts) {
  const id = facts.dataset.calc;
  const log = document.getElementById("log");
  const records = (await getJSON(`/v1/calc/${id}/log?after_id=${log.dataset.last}`))[0];
  for (const r of records) {
    log.insertAdjacentHTML("beforeend",
      `<span class="${text(r.level)}">${stamp(r.timestamp)} ${text(r.level)} ` +
      `${text(r.process)} ${text(r.message)}</span>\n`);
    log.dataset.last = r.id;
  }
  const calc = (await getJSON(`/v1/calc/${id}/status`))[0];
  const status = document.getElementById("status");
  status.textContent = calc.status;
  status.className = `status ${calc.status}`;
  document.getElementById("duration").textContent = duration(calc.duration);
  facts.dataset.refreshed = new Date().toISOString();
  if (TERMINAL.has(calc.status) && facts.dataset.running === "true") {
    window.location.reload();  // the final page has the task timings and traceback
  }
}

async function refreshWorkers(line) {
  const response = await fetch("/v1/workers/status");
  if (!response.ok) return;  // 503: no workerpools configured or reachable from the webui
  const pools = await response.json();
  line.innerHTML = "workerpools: " + pools.map(([host, running, total]) => running == null
    ? `<span class="down">${text(host)} not answering</span>`
    : `${text(host)} ${running}/${total} busy`).join(" · ");
  line.hidden = pools.length === 0;
}

function every(seconds, refresh) {
  const tick = () => refresh().catch((error) => console.warn(error.message))
    .finally(() => setTimeout(tick, seconds * 1000));
  tick();
}

const calcTable = document.getElementById("calcs");
if (calcTable) every(5, () => refreshList(calcTable));
const workersLine = document.getElementById("workers");
if (workersLine) every(10, () => refreshWorkers(workersLine));
const facts = document.getElementById("facts");
if (facts && facts.dataset.running === "true") every(2, () => refreshCalc(facts));
