"""The status page: ``GET /`` (and ``GET /ui``), one server-rendered HTML page.

Everything on it comes from :meth:`ModelRegistry.snapshot`, the same data as
``GET /admin/models``.  The page is complete without JavaScript; with it, the
page re-reads itself every two seconds and patches in what changed in its
``#live`` section, and its Load / Unload buttons call ``POST /admin/models/load`` and
``/unload``, sending ``Authorization: Bearer <key>`` when an admin key has been
typed in (kept in ``sessionStorage`` only).  Every value is escaped by Jinja's
autoescape, which Flask turns on for ``render_template_string``; the script
only ever sets ``textContent``.  The page needs no key: it changes nothing.
"""

from __future__ import annotations

import secrets
from typing import Any

from flask import Blueprint, Response, render_template_string

from .services import services
from .states import HOLDS_VRAM

bp = Blueprint("ui", __name__)

#: States whose VRAM counts against the budget (what ``used_vram_mb`` adds up).
_COUNTED = {s.value for s in HOLDS_VRAM}


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _unload_in(m: dict[str, Any]) -> str:
    if m["idle_timeout_seconds"] is None:
        return "never"
    if m["unload_in_seconds"] is not None:
        return _duration(m["unload_in_seconds"])
    return "in use" if m["in_flight"] else "\u2013"


def _rows(snap: dict[str, Any]) -> list[dict[str, Any]]:
    total = max(snap["total_vram_mb"], 1)
    return [
        {
            **m,
            "counted": m["state"] in _COUNTED,
            "share_pct": min(100.0, 100.0 * m["vram_mb"] / total),
            "unload_in": _unload_in(m),
            # The page is public: the reason only; the backend's log lines that
            # follow it are for /admin (behind the admin key).
            "last_error": (m["last_error"] or "").split("\n", 1)[0] or None,
        }
        for m in snap["models"]
    ]


@bp.get("/")
@bp.get("/ui")
def status_page() -> Response:
    snap = services().registry.snapshot()
    nonce = secrets.token_urlsafe(16)
    html = render_template_string(
        PAGE,
        snap=snap,
        rows=_rows(snap),
        used_pct=min(100.0, 100.0 * snap["used_vram_mb"] / max(snap["total_vram_mb"], 1)),
        nonce=nonce,
    )
    return Response(
        html,
        mimetype="text/html",
        headers={
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": (
                f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; "
                "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
            ),
        },
    )


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>DynLLM status</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 .6em; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .35em .6em; border-bottom: 1px solid #ddd; }
td { vertical-align: top; }
th { background: #f4f4f4; }
.bar { background: #eee; border: 1px solid #ccc; height: .9em; display: flex; overflow: hidden; }
.bar span { display: block; height: 100%; background: #4a7bd0; }
.bar span:nth-child(even) { background: #7aa5e8; }
.bar span.off { background: transparent; outline: 1px dashed #999; outline-offset: -1px; }
#budget .bar { height: 1.3em; margin: .3em 0 1em; max-width: 40em; }
td.vram .bar { width: 8em; margin-top: .2em; }
td.actions { white-space: nowrap; }
.state { font-weight: 600; }
.state-loaded { color: #176317; } .state-failed { color: #b00020; }
.state-loading, .state-unloading { color: #8a5a00; }
.err, #messages li { white-space: pre-wrap; word-break: break-word; }
.err { color: #b00020; max-height: 8em; overflow: auto; font-size: .9em; }
#controls { margin: 0 0 1em; }
#messages { list-style: none; padding: 0; margin: .5em 0 1em; }
#messages li { padding: .2em .4em; border-left: 3px solid #4a7bd0; margin-bottom: .2em; }
#messages li.error { border-color: #b00020; color: #b00020; }
#conn { color: #666; font-size: .9em; } #conn.error { color: #b00020; }
</style>
</head>
<body>
<h1>DynLLM status</h1>
<div id="controls">
  <label>Admin key <input id="admin-key" type="password" autocomplete="off"
    placeholder="only if admin_api_key is set"></label>
  <span id="conn"></span>
  <noscript><p>Without JavaScript this page does not refresh itself and
    the Load / Unload buttons do nothing.</p></noscript>
  <ul id="messages" aria-live="polite"></ul>
</div>
<section id="live">
<div id="budget" data-used-mb="{{ snap.used_vram_mb }}" data-total-mb="{{ snap.total_vram_mb }}">
  VRAM budget: <b class="used">{{ snap.used_vram_mb }} MB</b> of {{ snap.total_vram_mb }} MB
  in use ({{ "%.0f"|format(used_pct) }}%), {{ snap.free_vram_mb }} MB free
  <div class="bar">{% for r in rows if r.counted %}<span
    style="width: {{ '%.3f'|format(r.share_pct) }}%"
    title="{{ r.name }}: {{ r.vram_mb }} MB ({{ r.state }})"></span>{% endfor %}</div>
</div>
<table>
<thead><tr><th>Model</th><th>State</th><th>Backend</th><th>Type</th><th>Port</th>
<th>Declared VRAM</th><th>In flight</th><th>Unloads in</th><th>Last error</th><th></th></tr></thead>
<tbody>
{% for r in rows %}
<tr data-model="{{ r.name }}">
  <td class="name">{{ r.name }}</td>
  <td class="state state-{{ r.state }}" data-state="{{ r.state }}">{{ r.state }}
    {%- if r.pending_load %} (load waiting for room){% endif %}</td>
  <td class="backend">{{ r.backend }}</td>
  <td class="type">{{ r.model_type }}</td>
  <td class="port">{{ r.port if r.port is not none else "" }}</td>
  <td class="vram">{{ r.vram_mb }} MB ({{ "%.0f"|format(r.share_pct) }}%)
    <div class="bar"><span class="{{ 'on' if r.counted else 'off' }}"
      style="width: {{ '%.3f'|format(r.share_pct) }}%"></span></div></td>
  <td class="inflight">{{ r.in_flight }}</td>
  <td class="idle">{{ r.unload_in }}</td>
  <td class="error">{% if r.last_error %}<div class="err">{{ r.last_error }}</div>{% endif %}</td>
  <td class="actions">
    <button type="button" data-action="load" data-model="{{ r.name }}">Load</button>
    <button type="button" data-action="unload" data-model="{{ r.name }}">Unload</button></td>
</tr>
{% else %}
<tr><td colspan="10">No models configured.</td></tr>
{% endfor %}
</tbody>
</table>
</section>
<script nonce="{{ nonce }}">
(function () {
  "use strict";
  var KEY = "dynllm.adminKey";
  var keyInput = document.getElementById("admin-key");
  var messages = document.getElementById("messages");
  var conn = document.getElementById("conn");
  var busy = false, again = false;

  keyInput.value = sessionStorage.getItem(KEY) || "";
  keyInput.addEventListener("input", function () {
    if (keyInput.value) sessionStorage.setItem(KEY, keyInput.value);
    else sessionStorage.removeItem(KEY);
  });

  function say(text, isError) {
    var li = document.createElement("li");
    li.textContent = text;
    if (isError) li.className = "error";
    messages.prepend(li);
    while (messages.children.length > 6) messages.lastElementChild.remove();
  }

  function sameAttributes(a, b) {
    return a.attributes.length === b.attributes.length &&
      Array.from(a.attributes).every(function (x) { return b.getAttribute(x.name) === x.value; });
  }

  // Replace only the nodes that changed, so that scroll positions, focus and
  // selections elsewhere in the table survive a refresh.
  function patch(cur, next) {
    if (cur.isEqualNode(next)) return;
    if (cur.nodeType !== 1 || cur.nodeName !== next.nodeName || !sameAttributes(cur, next) ||
        !cur.childNodes.length || cur.childNodes.length !== next.childNodes.length) {
      cur.replaceWith(document.adoptNode(next));
      return;
    }
    var c = Array.from(cur.childNodes), n = Array.from(next.childNodes);
    for (var i = 0; i < c.length; i++) patch(c[i], n[i]);
  }

  async function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    try {
      var r = await fetch(location.href, {cache: "no-store"});
      if (!r.ok) throw new Error("HTTP " + r.status);
      var doc = new DOMParser().parseFromString(await r.text(), "text/html");
      var fresh = doc.getElementById("live");
      if (!fresh) throw new Error("unexpected answer");
      patch(document.getElementById("live"), fresh);
      conn.textContent = "updated " + new Date().toLocaleTimeString();
      conn.className = "";
    } catch (e) {
      conn.textContent = "cannot reach DynLLM (" + e.message + ")";
      conn.className = "error";
    } finally {
      busy = false;
      if (again) { again = false; refresh(); }
    }
  }

  async function act(action, model) {
    var headers = {"Content-Type": "application/json"};
    var key = sessionStorage.getItem(KEY);
    if (key) headers["Authorization"] = "Bearer " + key;
    say(action + " " + model + " \\u2026", false);
    setTimeout(refresh, 200);
    try {
      var r = await fetch("admin/models/" + action, {
        method: "POST", headers: headers, body: JSON.stringify({model: model})
      });
      var body = null;
      try { body = await r.json(); } catch (e) { body = null; }
      if (r.ok) {
        say(action + " " + model + ": done, now " + (body && body.state), false);
      } else {
        var msg = body && body.error && body.error.message;
        msg = msg || ("HTTP " + r.status + " " + r.statusText);
        if (r.status === 401) msg += " (enter the admin key above)";
        say(action + " " + model + " failed (" + r.status + "): " + msg, true);
      }
    } catch (e) {
      say(action + " " + model + " failed: " + e.message, true);
    }
    refresh();
  }

  document.addEventListener("click", function (ev) {
    var b = ev.target.closest("button[data-action]");
    if (b && (b.dataset.action === "load" || b.dataset.action === "unload")) {
      act(b.dataset.action, b.dataset.model);
    }
  });
  setInterval(function () { if (!document.hidden) refresh(); }, 2000);
})();
</script>
</body>
</html>
"""
