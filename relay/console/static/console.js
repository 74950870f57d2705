// Live updates for the console: poll a JSON endpoint, change the page in place.
// No framework and no inline script (the Content-Security-Policy forbids it).
"use strict";

const EVERY_MS = 3000;

function cell(row, text, cls) {
  const td = document.createElement("td");
  if (cls) td.className = cls;
  td.textContent = text === null || text === undefined ? "" : String(text);
  row.appendChild(td);
  return td;
}

function when(seconds) {
  return new Date(seconds * 1000).toISOString().slice(0, 19).replace("T", " ");
}

// The delivery log: prepend rows newer than the newest shown.
function liveLog(table) {
  const body = table.tBodies[0];
  let newest = Number(table.dataset.newest);
  async function poll() {
    const sep = table.dataset.live.includes("?") ? "&" : "?";
    const resp = await fetch(`${table.dataset.live}${sep}after=${newest}`, {credentials: "same-origin"});
    if (!resp.ok) return;
    const data = await resp.json();
    for (const r of data.rows.reverse()) {
      const row = document.createElement("tr");
      row.className = r.status;
      const link = document.createElement("a");
      link.href = `/ui/events/${r.id}`;
      link.textContent = String(r.id);
      cell(row, "").appendChild(link);
      cell(row, when(r.created_at));
      cell(row, r.event);
      cell(row, r.token);
      cell(row, r.player);
      cell(row, r.server_event_id, "sid");
      const status = document.createElement("span");
      status.className = `status ${r.status}`;
      status.textContent = r.status;
      cell(row, "").appendChild(status);
      cell(row, r.outcome);
      cell(row, r.state);
      cell(row, r.snippet, "snippet");
      body.insertBefore(row, body.firstChild);
      newest = Math.max(newest, r.id);
    }
  }
  setInterval(() => poll().catch(() => {}), EVERY_MS);
}

// An event's page: reload when its status changes (after a Retry, say).
function liveStatus(el) {
  async function poll() {
    const resp = await fetch(el.dataset.live, {credentials: "same-origin"});
    if (!resp.ok) return;
    const data = await resp.json();
    if (data.status !== el.dataset.status) window.location.reload();
  }
  if (el.dataset.status !== "delivered") setInterval(() => poll().catch(() => {}), EVERY_MS / 3);
}

// Dead letters: update each running retry's progress in place until all are done.
function liveJobs(list) {
  const timer = setInterval(() => poll().catch(() => {}), EVERY_MS / 3);
  async function poll() {
    const resp = await fetch(list.dataset.progress, {credentials: "same-origin"});
    if (!resp.ok) return;
    const data = await resp.json();
    for (const job of data.jobs) {
      for (const item of list.querySelectorAll("li")) {
        if (item.dataset.server !== job.server_id || item.dataset.reason !== job.reason) continue;
        const bar = item.querySelector("progress");
        bar.max = job.total || 1;
        bar.value = job.done ? bar.max : job.requeued;
        item.querySelector(".job-state").textContent =
          `${job.requeued} of ${job.total} re-queued` +
          (job.followers ? ` (and ${job.followers} held back behind them)` : "") +
          (job.done ? ", done" : "") +
          (job.error ? `: ${job.error}` : "");
      }
    }
    if (data.jobs.every((j) => j.done)) clearInterval(timer);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const log = document.querySelector("table[data-live]");
  if (log) liveLog(log);
  const status = document.querySelector("#status[data-live]");
  if (status) liveStatus(status);
  const jobs = document.querySelector("#jobs[data-progress]");
  if (jobs) liveJobs(jobs);
});
