/**
 * The dashboard: one self-contained page (no CDN, no build step) that polls the admin API every 2 s.
 * With admin.token set it asks for the token once and keeps it in sessionStorage.
 */
export const DASHBOARD_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>sluice</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #222; }
  h1 { font-size: 1.3rem; margin: 0 0 .2rem; } h2 { font-size: 1.05rem; margin: 1.5rem 0 .5rem; }
  table { border-collapse: collapse; width: 100%; } th, td { text-align: left; padding: .3rem .6rem; border-bottom: 1px solid #ddd; vertical-align: top; }
  th { background: #f4f4f4; font-weight: 600; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
  .paused { color: #a00; font-weight: 600; } .ok { color: #070; } .muted { color: #777; }
  .reply { font-family: ui-monospace, monospace; font-size: 12px; max-width: 40rem; word-break: break-word; }
  button { margin-right: .3rem; } #error { color: #a00; min-height: 1.2em; }
</style>
</head>
<body>
<h1>sluice</h1>
<div class="muted">updated <span id="updated">never</span> &middot; refreshes every 2 s</div>
<div id="error" role="alert"></div>
<h2>Mailboxes</h2>
<table id="mailboxes"><thead><tr>
  <th>mailbox</th><th>state</th><th>queued</th><th>delayed</th><th>active</th><th>failed</th><th>oldest</th>
  <th>messages / minute</th><th>recipients / day</th><th>connections</th><th>drains in</th><th></th>
</tr></thead><tbody></tbody></table>
<h2>Failed</h2>
<table id="failed"><thead><tr>
  <th>id</th><th>mailbox</th><th>client</th><th>from</th><th>to</th><th>failed</th><th>upstream reply</th><th></th>
</tr></thead><tbody></tbody></table>
<h2>Recently delivered</h2>
<table id="delivered"><thead><tr>
  <th>id</th><th>mailbox</th><th>client</th><th>to</th><th>delivered</th>
</tr></thead><tbody></tbody></table>
<script>
"use strict";
const tokenKey = "sluice-admin-token";
function headers() {
  const token = sessionStorage.getItem(tokenKey);
  return token ? { authorization: "Bearer " + token } : {};
}
async function api(method, path, body) {
  const init = { method, headers: { ...headers(), "content-type": "application/json" } };
  if (body) init.body = JSON.stringify(body);
  const res = await fetch("/api" + path, init);
  if (res.status === 401) {
    const token = prompt("Admin token (admin.token in the sluice configuration)");
    if (token) { sessionStorage.setItem(tokenKey, token); return api(method, path, body); }
  }
  const json = await res.json();
  if (!res.ok) throw new Error(json.error || res.statusText);
  return json;
}
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function ago(ms) {
  if (ms === null || ms === undefined) return "";
  const s = Math.round(ms / 1000);
  if (s < 120) return s + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  if (s < 172800) return Math.round(s / 3600) + " h";
  return Math.round(s / 86400) + " d";
}
function when(t) { return t ? new Date(t).toLocaleString() : ""; }
function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    if (c instanceof Node) tr.appendChild(c);
    else { const td = el("td", c[0], c[1]); tr.appendChild(td); }
  }
  return tr;
}
function button(label, action) {
  const b = el("button", label);
  b.addEventListener("click", async () => {
    b.disabled = true;
    try { await action(); await refresh(); } catch (err) { showError(err); } finally { b.disabled = false; }
  });
  return b;
}
function showError(err) { document.getElementById("error").textContent = err ? String(err.message || err) : ""; }
function fill(id, rows) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren(...rows);
}
async function refresh() {
  try {
    const [status, failed, delivered] = await Promise.all([
      api("GET", "/status"),
      api("GET", "/messages?state=failed&limit=200"),
      api("GET", "/messages?state=delivered&limit=20"),
    ]);
    fill("mailboxes", status.mailboxes.map((m) => {
      const state = m.pause ? "paused (" + m.pause.kind + "): " + m.pause.reason : "running";
      const actions = el("td");
      if (m.mailbox !== "held") {
        actions.appendChild(m.pause
          ? button("Resume", () => api("POST", "/mailboxes/" + encodeURIComponent(m.mailbox) + "/resume"))
          : button("Pause", () => api("POST", "/mailboxes/" + encodeURIComponent(m.mailbox) + "/pause", { reason: "paused from the dashboard" })));
      }
      const tr = row([[m.mailbox], [state, m.pause ? "paused" : "ok"], [m.queued, "num"], [m.delayed, "num"], [m.active, "num"],
        [m.failed, "num"], [ago(m.oldestAgeMs)], [m.messagesLastMinute + " / " + m.limits.messagesPerMinute, "num"],
        [m.recipientsLastDay + " / " + m.limits.recipientsPerDay, "num"], [m.leases + " / " + m.connectionLimit + (m.connectionLimit < m.limits.connections ? " (432 cool-down)" : ""), "num"],
        [m.drainEstimateMs === null ? "" : ago(m.drainEstimateMs)], actions]);
      tr.dataset.mailbox = m.mailbox;
      return tr;
    }));
    fill("failed", failed.messages.map((m) => {
      const actions = el("td");
      actions.appendChild(button("Retry", () => api("POST", "/messages/" + encodeURIComponent(m.id) + "/retry")));
      actions.appendChild(button("Purge", () => confirm("Delete message " + m.id + " for good?")
        ? api("POST", "/messages/" + encodeURIComponent(m.id) + "/purge") : null));
      const tr = row([[m.id], [m.mailbox], [m.client], [m.mailFrom || "<>"], [m.recipients.join(", ")],
        [when(m.failedAt)], [m.lastReply, "reply"], actions]);
      // what to do about the reply (the reply table's hint), on hovering it
      if (m.hint) tr.cells[6].title = m.hint;
      tr.dataset.id = m.id;
      return tr;
    }));
    fill("delivered", delivered.messages.map((m) => {
      const tr = row([[m.id], [m.mailbox], [m.client], [m.delivered.join(", ")], [when(m.deliveredAt)]]);
      tr.dataset.id = m.id;
      return tr;
    }));
    document.getElementById("updated").textContent = new Date().toLocaleTimeString();
    showError(null);
  } catch (err) {
    showError(err);
  }
}
refresh();
setInterval(refresh, 2000);
</script>
</body>
</html>
`;
