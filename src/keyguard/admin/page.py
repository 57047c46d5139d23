# ruff: noqa: E501 - the page is HTML, CSS and JS in strings
"""The "API Keys" page: one server-rendered HTML document, inline CSS and JS.

Owns what a person sees and does: the key list, the create/edit/rotate/
suspend/resume/revoke/delete dialogs, the secret shown once, the step-up code
prompt. It decides nothing about who may do what: the JSON API next to it
does, and the page follows what the API says (`operator`, `who`, `owner` from
`GET /api/keys`; the grantable scopes from `GET /api/scopes`; a refusal's own
`detail` and `code`), so it never offers a scope the API would refuse.

No build step, no asset from anywhere: the page is this string. Two ways in:
- Key mode (no `authorize`): the page asks for an admin key once, keeps it in
  `sessionStorage` (this tab only) and sends it as `Authorization: Bearer`.
- Host mode (`authorize`): the page never asks for a key; fetches carry the
  host's cookies and an `X-Requested-With` header (the API's CSRF check).

The inline script and style run under a per-response CSP nonce; data from the
API is only ever put in the page as text, never as HTML. A new token or secret
lives in an input's value only while its dialog is open (cleared on close),
never in storage, a URL or an attribute.
"""

from __future__ import annotations

import html
import json
import re
import secrets
from collections.abc import Mapping


def render_page(
    *,
    title: str,
    base: str,
    host_auth: bool,
    max_days: int | None = None,
    allow_private_ips: bool = False,
    signing: bool = False,
    step_up: bool = False,
    headers: Mapping[str, str] | None = None,
) -> tuple[str, str]:
    """(html, nonce) for one response.

    `max_days`: the policy cap for keys without trusted IPs; `allow_private_ips`:
    whether private ranges may be trusted; `signing`: whether signing keys can be
    made (a master key is set); `step_up`: whether changes ask for a one-time
    code; `headers`: the header names clients use (`key`, `passphrase`,
    `signing_key`, `signing_passphrase`), shown as usage hints."""
    nonce = secrets.token_urlsafe(16)
    config = {
        "base": base.rstrip("/"),
        "hostAuth": host_auth,
        "maxDays": max_days,
        "allowPrivate": allow_private_ips,
        "signing": signing,
        "stepUp": step_up,
        "headers": {**_HEADERS, **(headers or {})},
    }
    # "<" escaped so no value can close the <script> element.
    config_json = json.dumps(config).replace("<", "\\u003c")
    values = {
        "title": html.escape(title),
        "nonce": nonce,
        "config": config_json,
        "css": _CSS,
        "js": _JS,
    }
    # One pass over the template: a value (a title or mount path holding "{{js}}",
    # say) is put in as it is, never searched for placeholders itself.
    return _PLACEHOLDER.sub(lambda m: values[m[1]], _TEMPLATE), nonce


_PLACEHOLDER = re.compile(r"\{\{(title|nonce|config|css|js)\}\}")


_HEADERS = {
    "key": "X-API-Key",
    "passphrase": "KG-Passphrase",
    "signing_key": "KG-ACCESS-KEY",
    "signing_passphrase": "KG-PASSPHRASE",
}


def _key_fields(p: str) -> str:
    """The fields the create (`c`) and edit (`e`) dialogs share: scopes, trusted
    IPs, rate limit. Ids are prefixed so each dialog has its own."""
    return f"""
    <fieldset class="field" id="{p}-scopes" aria-describedby="{p}-scopes-error">
      <legend>Scopes</legend>
      <div class="scope-list" id="{p}-scope-list"></div>
      <p class="note" id="{p}-scopes-none" hidden>There are no scopes you can grant: the key can call only routes that need no scope.</p>
      <div class="field" id="{p}-scopes-extra-wrap">
        <label for="{p}-scopes-extra">Other scopes <span class="hint">(separated by spaces or commas)</span></label>
        <input id="{p}-scopes-extra" autocomplete="off" spellcheck="false">
      </div>
      <p class="error" id="{p}-scopes-error" hidden></p>
    </fieldset>
    <fieldset class="field" id="{p}-ips" aria-describedby="{p}-ips-note {p}-ips-error">
      <legend>Trusted IPs</legend>
      <ul class="chips" id="{p}-ip-list" aria-label="Trusted IPs of this key"></ul>
      <p class="hint" id="{p}-ip-empty">None: the key works from any address.</p>
      <label for="{p}-ip">Add an IP address or CIDR range</label>
      <div class="addrow">
        <input id="{p}-ip" autocomplete="off" spellcheck="false" inputmode="text" placeholder="203.0.113.7 or 203.0.113.0/24">
        <button type="button" id="{p}-ip-add">Add</button>
      </div>
      <p class="note" id="{p}-ips-note"></p>
      <p class="error" id="{p}-ips-error" hidden></p>
      <p class="note policy" id="{p}-ips-policy" hidden></p>
    </fieldset>
    <div class="field" id="{p}-rate-wrap">
      <label for="{p}-rate">Rate limit</label>
      <select id="{p}-rate" aria-describedby="{p}-rate-hint {p}-rate-error">
        <option value="">No limit</option>
        <option value="60/minute">60 requests a minute</option>
        <option value="1000/hour">1,000 requests an hour</option>
        <option value="10/second;10000/day">10 a second, 10,000 a day</option>
        <option value="custom">Custom…</option>
      </select>
      <label for="{p}-rate-custom" class="sr-only">Custom rate limit</label>
      <input id="{p}-rate-custom" autocomplete="off" spellcheck="false" placeholder="100/minute or 10/second;1000/hour" hidden>
      <p class="hint" id="{p}-rate-hint">Requests over the limit are answered 429 Too Many Requests.</p>
      <p class="error" id="{p}-rate-error" hidden></p>
    </div>"""


def _copy_row(name: str, label: str, what: str) -> str:
    """One value of the secret dialog (`secret-<name>`), with its copy button."""
    return f"""  <div class="field" id="secret-{name}-row">
    <label for="secret-{name}">{label}</label>
    <div class="copyrow">
      <input id="secret-{name}" class="secret" readonly spellcheck="false" autocomplete="off">
      <button type="button" class="primary copy" data-copy="secret-{name}" data-what="{what}" aria-label="Copy {what}">Copy</button>
    </div>
  </div>
"""


_TEMPLATE = (
    """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{{title}}</title>
<style nonce="{{nonce}}">{{css}}</style>
</head>
<body>
<a class="skip" href="#main">Skip to content</a>
<header class="bar">
  <h1>{{title}}</h1>
  <div class="session">
    <span id="whoami" hidden>Signed in as <strong id="who"></strong> <span class="badge" id="role"></span></span>
    <button type="button" id="signout" class="link" hidden>Sign out</button>
  </div>
</header>
<main id="main" tabindex="-1">
  <section id="signin" hidden aria-labelledby="signin-title">
    <h2 id="signin-title">Sign in</h2>
    <p class="error notice" id="signin-error" role="alert" hidden></p>
    <p id="signin-help">Paste an API key that holds the <code>keyguard:admin</code> scope.
      It is kept in this browser tab only and sent with each request.</p>
    <form id="signin-form" novalidate>
      <label for="admin-key">Admin key</label>
      <input id="admin-key" name="admin-key" type="password" autocomplete="off"
             spellcheck="false" required aria-describedby="signin-error">
      <div class="actions"><button type="submit" class="primary">Sign in</button></div>
    </form>
  </section>

  <section id="host-signin" hidden aria-labelledby="host-signin-title">
    <h2 id="host-signin-title">Sign in to manage your API keys</h2>
    <p id="host-signin-text"></p>
    <p class="error" id="host-signin-error" role="alert"></p>
    <div class="actions start"><button type="button" id="reload" class="primary">Reload</button></div>
  </section>

  <section id="keys" hidden aria-labelledby="keys-title">
    <div class="toolbar">
      <div>
        <h2 id="keys-title">Keys</h2>
        <p class="hint" id="mode-note"></p>
      </div>
      <div class="buttons">
        <button type="button" id="refresh">Refresh</button>
        <button type="button" id="new-key" class="primary">Create key</button>
      </div>
    </div>
    <div class="filters">
      <label id="owner-filter-wrap">Owner
        <input id="owner-filter" type="search" autocomplete="off" placeholder="all owners">
      </label>
      <label class="check"><input id="include-revoked" type="checkbox"> <span>Show revoked keys</span></label>
    </div>
    <p id="status" role="status" aria-live="polite"></p>
    <div class="table-wrap" id="table-wrap">
      <table id="key-table">
        <caption class="sr-only">API keys</caption>
        <thead><tr>
          <th scope="col">Name</th><th scope="col" id="th-owner">Owner</th><th scope="col">Key ID</th>
          <th scope="col">Scopes</th><th scope="col">Trusted IPs</th><th scope="col">Created</th>
          <th scope="col">Last used</th><th scope="col">Expires</th><th scope="col">Status</th>
          <th scope="col">Actions</th>
        </tr></thead>
        <tbody id="rows"></tbody>
      </table>
    </div>
    <p id="empty" hidden>No keys yet. Create one to get started.</p>
  </section>
</main>

<dialog id="create-dialog" aria-labelledby="create-title">
  <form id="create-form" novalidate>
    <h2 id="create-title">Create API key</h2>
    <div class="field" id="c-owner-wrap">
      <label for="c-owner">Owner</label>
      <input id="c-owner" name="owner" autocomplete="off" required aria-describedby="c-owner-error">
      <p class="error" id="c-owner-error" hidden></p>
    </div>
    <div class="field">
      <label for="c-name">Name</label>
      <input id="c-name" name="name" autocomplete="off" required maxlength="200"
             aria-describedby="c-name-error" placeholder="What or who uses it, e.g. ci-deploy">
      <p class="error" id="c-name-error" hidden></p>
    </div>
    <fieldset class="field" id="c-kind" aria-describedby="c-kind-note c-kind-error">
      <legend>Type</legend>
      <label class="check"><input type="radio" name="kind" value="bearer" checked> <span>Bearer token <span class="hint">(one string, sent with each request)</span></span></label>
      <label class="check"><input type="radio" name="kind" value="signing" id="c-kind-signing"> <span>Signing key <span class="hint">(access key and secret; each request is signed)</span></span></label>
      <p class="note" id="c-kind-note" hidden>Signing keys need a master key on the server (<code>signing.master_keys</code>).</p>
      <p class="error" id="c-kind-error" hidden></p>
    </fieldset>
"""
    + _key_fields("c")
    + """
    <div class="field">
      <label for="c-expiry">Expires</label>
      <select id="c-expiry" aria-describedby="c-expiry-note c-expiry-error">
        <option value="7d">In 7 days</option>
        <option value="30d">In 30 days</option>
        <option value="90d" selected>In 90 days</option>
        <option value="365d">In 1 year</option>
        <option value="never">Never</option>
        <option value="custom">On a date…</option>
      </select>
      <label for="c-expires-date" class="sr-only">Expiry date</label>
      <input id="c-expires-date" type="date" hidden>
      <p class="note" id="c-expiry-note" hidden></p>
      <p class="error" id="c-expiry-error" hidden></p>
    </div>
    <div class="field">
      <label for="c-passphrase">Passphrase <span class="hint">(optional)</span></label>
      <input id="c-passphrase" type="password" autocomplete="new-password" aria-describedby="c-passphrase-rules c-passphrase-error">
      <p class="hint" id="c-passphrase-rules"></p>
      <p class="error" id="c-passphrase-error" hidden></p>
      <label for="c-passphrase2">Confirm passphrase</label>
      <input id="c-passphrase2" type="password" autocomplete="new-password" aria-describedby="c-passphrase2-error">
      <p class="error" id="c-passphrase2-error" hidden></p>
    </div>
    <p class="error" id="c-form-error" role="alert" hidden></p>
    <div class="actions">
      <button type="button" class="cancel">Cancel</button>
      <button type="submit" class="primary">Create key</button>
    </div>
  </form>
</dialog>

<dialog id="secret-dialog" aria-labelledby="secret-title" aria-describedby="secret-warning">
  <h2 id="secret-title">Copy your new key</h2>
  <p class="warning" id="secret-warning"><strong>This is the only time it is shown.</strong>
    Store it in a secret manager now. If you lose it, rotate the key to get a new one.</p>
"""
    + _copy_row("token", "API key", "API key")
    + _copy_row("access", "Access key", "access key")
    + _copy_row("secret", "Secret", "secret")
    + """  <p class="note" id="secret-usage"></p>
  <p id="copy-status" role="status" aria-live="polite"></p>
  <div class="actions"><button type="button" id="secret-done">I have stored it</button></div>
</dialog>

<dialog id="edit-dialog" aria-labelledby="edit-title">
  <form id="edit-form" novalidate>
    <h2 id="edit-title">Edit key</h2>
    <div class="field">
      <label for="e-name">Name</label>
      <input id="e-name" autocomplete="off" required maxlength="200" aria-describedby="e-name-error">
      <p class="error" id="e-name-error" hidden></p>
    </div>
"""
    + _key_fields("e")
    + """
    <p class="error" id="e-form-error" role="alert" hidden></p>
    <div class="actions">
      <button type="button" class="cancel">Cancel</button>
      <button type="submit" class="primary">Save changes</button>
    </div>
  </form>
</dialog>

<dialog id="confirm-dialog" aria-labelledby="confirm-title" aria-describedby="confirm-text">
  <form id="confirm-form" novalidate>
    <h2 id="confirm-title">Are you sure?</h2>
    <p id="confirm-text"></p>
    <p class="warning" id="confirm-own" hidden></p>
    <div class="field" id="grace-wrap" hidden>
      <label for="grace">Old key keeps working for</label>
      <select id="grace">
        <option value="0">No time: stop it now</option>
        <option value="1h">1 hour</option>
        <option value="24h" selected>24 hours</option>
        <option value="7d">7 days</option>
      </select>
    </div>
    <p class="error" id="confirm-error" role="alert" hidden></p>
    <div class="actions">
      <button type="button" class="cancel">Cancel</button>
      <button type="submit" id="confirm-ok" class="danger">Confirm</button>
    </div>
  </form>
</dialog>

<dialog id="stepup-dialog" aria-labelledby="stepup-title" aria-describedby="stepup-text">
  <form id="stepup-form" novalidate>
    <h2 id="stepup-title">Confirm with a one-time code</h2>
    <p id="stepup-text"></p>
    <div class="field">
      <label for="stepup-code">One-time code</label>
      <input id="stepup-code" inputmode="numeric" autocomplete="one-time-code" maxlength="10"
             spellcheck="false" aria-describedby="stepup-error">
      <p class="error" id="stepup-error" role="alert" hidden></p>
    </div>
    <div class="actions">
      <button type="button" class="cancel">Cancel</button>
      <button type="submit" id="stepup-ok" class="primary">Confirm</button>
    </div>
  </form>
</dialog>

<script type="application/json" id="kg-config" nonce="{{nonce}}">{{config}}</script>
<script nonce="{{nonce}}">{{js}}</script>
</body>
</html>
"""
)

_CSS = """
:root { --fg:#1b1f24; --muted:#57606a; --bg:#fff; --line:#d0d7de; --soft:#f6f8fa;
  --accent:#0b5cad; --danger:#b42318; --ok:#1a7f37; --warn:#9a6700; --warn-bg:#fff4e5; --warn-line:#d97706;
  color-scheme: light dark; }
@media (prefers-color-scheme: dark) { :root { --fg:#e6edf3; --muted:#9da7b1; --bg:#0d1117;
  --line:#30363d; --soft:#161b22; --accent:#4493f8; --danger:#f85149; --ok:#3fb950; --warn:#d29922;
  --warn-bg:#2d2006; --warn-line:#d29922; } }
/* `hidden` always wins: no display rule below may show a hidden element. */
[hidden] { display:none !important; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color:var(--fg); background:var(--bg); }
.skip { position:absolute; left:-999px; } .skip:focus { left:8px; top:8px; background:var(--bg); padding:4px 8px; }
.sr-only { position:absolute; width:1px; height:1px; overflow:hidden; clip:rect(0 0 0 0); white-space:nowrap; }
.bar { display:flex; flex-wrap:wrap; align-items:center; justify-content:space-between; gap:4px 16px;
  padding:12px 20px; border-bottom:1px solid var(--line); background:var(--soft); }
.session { display:flex; flex-wrap:wrap; align-items:center; gap:4px 12px; min-width:0; overflow-wrap:anywhere; }
h1 { font-size:1.25rem; margin:0; } h2 { font-size:1.1rem; margin:0 0 12px; }
main { padding:20px; max-width:1440px; margin:0 auto; }
main:focus { outline:none; }
.toolbar { display:flex; flex-wrap:wrap; align-items:flex-start; justify-content:space-between; gap:12px; }
.toolbar h2 { margin:0; } .toolbar .hint { margin:2px 0 0; }
.buttons { display:flex; flex-wrap:wrap; gap:8px; }
.filters { display:flex; flex-wrap:wrap; gap:12px 16px; align-items:center; margin:12px 0; }
.filters input[type=search] { margin-left:6px; }
button { font:inherit; padding:6px 12px; border-radius:6px; border:1px solid var(--line);
  background:var(--soft); color:var(--fg); cursor:pointer; }
button:hover { border-color:var(--muted); }
button:disabled { opacity:.6; cursor:progress; }
button.primary { background:var(--accent); border-color:var(--accent); color:#fff; }
button.danger { background:var(--danger); border-color:var(--danger); color:#fff; }
button.link { background:none; border:none; padding:2px 0; color:var(--accent); text-decoration:underline; }
button.small { padding:2px 8px; font-size:.875rem; }
:focus-visible { outline:3px solid var(--accent); outline-offset:2px; }
input, select, textarea { font:inherit; padding:6px 8px; border:1px solid var(--line);
  border-radius:6px; background:var(--bg); color:var(--fg); max-width:100%; }
input[aria-invalid=true], select[aria-invalid=true], fieldset[aria-invalid=true] { border-color:var(--danger); }
.field { display:flex; flex-direction:column; gap:4px; margin:0 0 14px; border:0; padding:0; min-width:0; }
fieldset.field { border:1px solid var(--line); border-radius:6px; padding:8px 12px; }
fieldset .field { margin:6px 0 0; }
legend { padding:0 4px; font-weight:600; }
.check { display:inline-flex; gap:6px; align-items:baseline; }
.scope-list { display:flex; flex-direction:column; gap:6px; }
.scope .hint { display:block; margin-left:1.6em; }
.hint, .note { color:var(--muted); font-size:.875rem; font-weight:normal; margin:0; }
.note.warn { color:var(--warn); font-weight:600; }
.policy { border-left:3px solid var(--warn-line); padding-left:8px; }
.error { color:var(--danger); font-size:.875rem; margin:2px 0 0; overflow-wrap:anywhere; }
.notice { font-size:1rem; border-left:4px solid var(--danger); padding:6px 12px; background:var(--soft); }
.warning { background:var(--warn-bg); border-left:4px solid var(--warn-line); padding:8px 12px; }
.actions { display:flex; flex-wrap:wrap; justify-content:flex-end; gap:8px; margin-top:12px; }
.actions.start { justify-content:flex-start; }
#signin, #host-signin { max-width:520px; } #signin form { display:flex; flex-direction:column; gap:6px; }
.table-wrap { overflow-x:auto; }
table { border-collapse:collapse; width:100%; }
th, td { text-align:left; padding:8px 8px; border-bottom:1px solid var(--line); vertical-align:top; }
th { font-size:.75rem; text-transform:uppercase; letter-spacing:.03em; color:var(--muted); white-space:nowrap; }
td { font-size:.9rem; }
code, .mono, .secret { font-family:ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size:.85rem; }
.sub { display:block; color:var(--muted); font-size:.8rem; }
.tag { display:inline-block; padding:0 6px; margin:1px 2px 1px 0; border-radius:10px;
  border:1px solid var(--line); background:var(--soft); font-size:.8rem; white-space:nowrap; }
.badge { display:inline-block; padding:0 6px; border-radius:4px; font-size:.75rem; border:1px solid var(--line);
  color:var(--muted); white-space:nowrap; }
.status { font-weight:600; } .status-active { color:var(--ok); } .status-suspended { color:var(--warn); }
.status-revoked, .status-expired { color:var(--danger); }
.row-actions { display:grid; grid-template-columns:repeat(3, max-content); justify-items:start; gap:4px; }
.nowrap { white-space:nowrap; }
dialog { border:1px solid var(--line); border-radius:10px; padding:20px; width:min(600px, calc(100vw - 16px));
  max-height:calc(100vh - 16px); overflow:auto; color:var(--fg); background:var(--bg); }
dialog::backdrop { background:rgba(0,0,0,.45); }
.copyrow, .addrow { display:flex; gap:8px; } .copyrow input, .addrow input { flex:1; min-width:0; }
.chips { list-style:none; margin:0; padding:0; display:flex; flex-wrap:wrap; gap:6px; }
.chip { display:inline-flex; align-items:center; gap:4px; padding:1px 2px 1px 8px; border:1px solid var(--line);
  border-radius:12px; background:var(--soft); max-width:100%; overflow-wrap:anywhere; }
.chip.bad { border-color:var(--danger); color:var(--danger); }
.chip button { border:0; background:none; padding:0 6px; line-height:1.4; }
#status:empty { display:none; }
#status.error { font-size:1rem; }
@media (max-width: 760px) {
  .bar { padding:10px 12px; }
  main { padding:12px; }
  dialog { padding:14px; }
  thead { position:absolute; width:1px; height:1px; overflow:hidden; clip:rect(0 0 0 0); }
  table, tbody, tr, td { display:block; width:100%; }
  tr { border:1px solid var(--line); border-radius:8px; margin:0 0 12px; padding:6px 0; }
  td { border:0; padding:4px 12px; display:grid; grid-template-columns:6.5em minmax(0, 1fr); gap:8px; overflow-wrap:anywhere; }
  td::before { content:attr(data-label); color:var(--muted); font-size:.75rem; text-transform:uppercase; }
  .tag { white-space:normal; overflow-wrap:anywhere; }
  .row-actions { display:flex; flex-wrap:wrap; }
}
"""

_JS = r"""
(() => {
  'use strict';
  const $ = (id) => document.getElementById(id);
  const cfg = JSON.parse($('kg-config').textContent);
  const API = cfg.base + '/api';
  const STORE = 'keyguard-admin-key';  // key mode only: the admin key, this tab only
  let me = null;                        // {who, owner, operator}, as GET /api/keys says
  let grant = {scopes: [], any: false}; // GET /api/scopes: what this caller may grant
  let keysById = new Map();
  let lastTrigger = null;

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'text') e.textContent = v;
      else if (k === 'class') e.className = v;
      else if (k === 'onclick') e.addEventListener('click', v);
      else e.setAttribute(k, v === true ? '' : v);
    }
    for (const kid of kids) if (kid !== null && kid !== undefined) e.append(kid);
    return e;
  }

  // -- talking to the API ----------------------------------------------------------
  async function call(method, path, body, code) {
    const h = {'X-Requested-With': 'keyguard-admin', 'Accept': 'application/json'};
    if (body !== undefined) h['Content-Type'] = 'application/json';
    const key = cfg.hostAuth ? null : sessionStorage.getItem(STORE);
    if (key) h['Authorization'] = 'Bearer ' + key;
    if (code) h['X-Keyguard-Confirm'] = code;
    const init = {method, headers: h, credentials: 'same-origin', cache: 'no-store'};
    if (body !== undefined) init.body = JSON.stringify(body);
    let res;
    try { res = await fetch(API + path, init); }
    catch (e) { return {ok: false, status: 0, data: {detail: 'The server cannot be reached.'}}; }
    let data = null;
    if (res.status !== 204) { try { data = await res.json(); } catch (e) { data = null; } }
    return {ok: res.ok, status: res.status, data: data || {}};
  }

  // A refusal in its own words: the problem's detail, its code, what it misses.
  function problemText(res) {
    const d = res.data || {};
    let text = d.detail || ('The request failed (' + res.status + ').');
    const needs = Array.isArray(d.required_scopes) && d.required_scopes.length ? ': needs ' + d.required_scopes.join(', ') : '';
    if (d.code) text += ' (' + d.code + needs + ')';
    return text;
  }

  // A change, confirmed with a one-time code when the host asks for one (401
  // step_up_required): the same request is sent again with the code. Nothing is
  // changed until a code is accepted; cancelling changes nothing.
  const DOING = {create: 'create this key', rotate: 'rotate this key', update: 'save these changes',
                 suspend: 'suspend this key', resume: 'resume this key', revoke: 'revoke this key', delete: 'delete this key'};
  async function change(method, path, body, action) {
    let res = await call(method, path, body);
    let tries = 0;
    while (res.status === 401 && res.data.code === 'step_up_required') {
      const code = await askCode(res.data.action || action, tries++ > 0);
      if (code === null) return {ok: false, status: 0, cancelled: true, data: {detail: 'Not confirmed, so nothing was changed.'}};
      res = await call(method, path, body, code);
    }
    if ($('stepup-dialog').open) $('stepup-dialog').close();
    return res;
  }

  let codeWaiter = null;
  function askCode(action, wrong) {
    const d = $('stepup-dialog');
    $('stepup-text').textContent = 'To ' + (DOING[action] || 'make this change') + ', enter the current code from your authenticator app.';
    const err = $('stepup-error');
    err.textContent = wrong ? 'That code was not accepted, and nothing was changed. Codes change every 30 seconds and each works once: enter the current one. After several wrong codes, every code is refused for a few minutes.' : '';
    err.hidden = !wrong;
    $('stepup-code').value = '';
    $('stepup-code').setAttribute('aria-invalid', wrong ? 'true' : 'false');
    $('stepup-ok').disabled = false;
    if (!d.open) d.showModal();
    $('stepup-code').focus();
    return new Promise((resolve) => { codeWaiter = resolve; });
  }
  $('stepup-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const code = $('stepup-code').value.replace(/\s+/g, '');
    if (!/^[0-9]{6,8}$/.test(code)) {
      const err = $('stepup-error'); err.textContent = 'Enter the 6-digit code from your authenticator app.'; err.hidden = false;
      $('stepup-code').setAttribute('aria-invalid', 'true'); $('stepup-code').focus();
      return;
    }
    $('stepup-ok').disabled = true;
    const w = codeWaiter; codeWaiter = null;
    if (w) w(code);
  });
  $('stepup-dialog').addEventListener('close', () => {
    $('stepup-code').value = '';
    const w = codeWaiter; codeWaiter = null;
    if (w) w(null);
  });

  function say(text, isError) { const s = $('status'); s.textContent = text; s.className = isError ? 'error' : ''; }

  // -- signing in -------------------------------------------------------------------
  // Host mode has no key form at all (and key mode no host sign-in text).
  $(cfg.hostAuth ? 'signin' : 'host-signin').remove();
  function showOnly(id) {
    for (const s of ['signin', 'host-signin', 'keys']) if ($(s)) $(s).hidden = s !== id;
    $('whoami').hidden = id !== 'keys';
    $('signout').hidden = id !== 'keys' || cfg.hostAuth;
  }
  function closeDialogs() { for (const d of document.querySelectorAll('dialog[open]')) d.close(); }

  function showSignin(message) {  // key mode
    showOnly('signin');
    const err = $('signin-error');
    err.textContent = message || '';
    err.hidden = !message;
    $('admin-key').focus();
  }
  function showHostSignin(res) {  // host mode: the host's own login, never a key
    showOnly('host-signin');
    $('host-signin-text').textContent = res.status === 403
      ? 'You are signed in, but your account may not manage the keys on this page. Sign in to the app with an account that may, then reload this page.'
      : 'You are not signed in. Sign in to the app first, then reload this page.';
    $('host-signin-error').textContent = problemText(res);
    $('reload').focus();
  }
  if (cfg.hostAuth) {
    $('reload').addEventListener('click', () => { location.reload(); });
  } else {
    $('signin-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const value = $('admin-key').value.trim();
      $('admin-key').value = '';
      if (!value) { showSignin('Paste an admin key.'); return; }
      sessionStorage.setItem(STORE, value);
      load();
    });
  }

  function signOut(message) {  // key mode: forget the key, back to the key form
    sessionStorage.removeItem(STORE);
    me = null;
    keysById = new Map();
    $('rows').replaceChildren();
    closeDialogs();
    showSignin(message);
  }
  $('signout').addEventListener('click', () => signOut(''));

  // A 401 that is not a step-up (or a 403 on a host's login): the credential
  // itself was refused, so the page cannot go on with it.
  function refused(res) {
    if (res.cancelled || !(res.status === 401 || (res.status === 403 && cfg.hostAuth))) return false;
    if (cfg.hostAuth) { closeDialogs(); showHostSignin(res); }
    else signOut('The key you signed in with was refused: ' + problemText(res));
    return true;
  }

  // -- the table ----------------------------------------------------------------------
  const ownId = () => (me && !cfg.hostAuth && me.who.startsWith('key:')) ? me.who.slice(4) : null;

  function when(iso, empty) {  // the date, and the time below it
    if (!iso) return el('span', {class: 'hint', text: empty});
    const d = new Date(iso);
    return el('time', {datetime: iso, title: iso},
              el('span', {class: 'nowrap', text: d.toLocaleDateString(undefined, {dateStyle: 'medium'})}), ' ',
              el('span', {class: 'sub', text: d.toLocaleTimeString(undefined, {timeStyle: 'short'})}));
  }
  function tags(list, empty) {
    const frag = document.createDocumentFragment();
    if (!list.length) frag.append(el('span', {class: 'hint', text: empty}));
    for (const item of list) frag.append(el('span', {class: 'tag', text: item}));
    return frag;
  }
  function cell(label, ...content) {
    // One grid item on narrow screens (the label is the other).
    return el('td', {'data-label': label}, el('div', {}, ...content));
  }
  function button(text, label, cls, handler) {
    return el('button', {type: 'button', class: 'small ' + (cls || ''), 'aria-label': label, text,
                         onclick: (ev) => { lastTrigger = ev.currentTarget; handler(); }});
  }
  const STATUS = {active: 'Active', suspended: 'Suspended', expired: 'Expired', revoked: 'Revoked'};

  function render(keys) {
    const rows = $('rows');
    rows.replaceChildren();
    keysById = new Map(keys.map((k) => [k.id, k]));
    const mine = ownId();
    for (const key of keys) {
      const state = key.status;
      const tr = el('tr', {'data-key-id': key.id, 'data-status': state});
      const kind = el('span', {class: 'sub'}, key.kind === 'signing' ? 'Signing key' : 'Bearer token',
                      key.has_passphrase ? ' · passphrase' : null, key.rate_limit ? ' · limit ' + key.rate_limit : null);
      tr.append(cell('Name', el('strong', {text: key.name}), kind,
                     key.id === mine ? el('span', {class: 'badge', text: 'this session', title: 'You are signed in with this key'}) : null));
      if (me.operator) tr.append(cell('Owner', el('span', {text: key.owner})));
      tr.append(cell('Key ID', el('span', {class: 'mono', text: key.id}), el('span', {class: 'sub mono', text: key.hint})));
      tr.append(cell('Scopes', tags(key.scopes, 'none')));
      tr.append(cell('Trusted IPs', tags(key.allowed_ips, 'any address')));
      tr.append(cell('Created', when(key.created_at, '')));
      tr.append(cell('Last used', when(key.last_used_at, 'never'),
                     key.last_used_from ? el('span', {class: 'sub', text: 'from ' + key.last_used_from}) : null));
      tr.append(cell('Expires', when(key.expires_at, 'never')));
      const since = state === 'revoked' ? key.revoked_at : state === 'suspended' ? key.suspended_at : null;
      // Who suspended it: only an operator may resume a key an operator suspended.
      const heldByOps = key.suspended_at && key.suspended_by === 'operator';
      const by = !key.suspended_at ? null : me.operator
        ? (key.suspended_by === 'owner' ? 'by its owner' : 'by an operator')
        : (heldByOps ? 'by an operator: only an operator can resume it' : 'by you');
      tr.append(cell('Status', el('span', {class: 'status status-' + state, text: STATUS[state] || state}),
                     since ? el('span', {class: 'sub'}, 'since ', el('span', {class: 'nowrap', text: new Date(since).toLocaleDateString(undefined, {dateStyle: 'medium'})})) : null,
                     state === 'suspended' && by ? el('span', {class: 'sub suspended-by', text: by}) : null));
      const actions = el('div', {class: 'row-actions'});
      if (state !== 'revoked') {
        actions.append(button('Edit', 'Edit key ' + key.name, '', () => openEdit(key.id)));
        actions.append(button('Rotate', 'Rotate key ' + key.name, '', () => confirmRotate(key.id)));
        if (key.suspended_at) {
          // The API refuses a tenant's resume of an operator's suspension: not offered.
          if (me.operator || !heldByOps) actions.append(button('Resume', 'Resume key ' + key.name, '', () => resume(key.id)));
        } else actions.append(button('Suspend', 'Suspend key ' + key.name, '', () => confirmEnd('suspend', key.id)));
        actions.append(button('Revoke', 'Revoke key ' + key.name, '', () => confirmEnd('revoke', key.id)));
      }
      actions.append(button('Delete', 'Delete key ' + key.name, 'danger', () => confirmEnd('delete', key.id)));
      tr.append(cell('Actions', actions));
      rows.append(tr);
    }
    $('empty').hidden = keys.length > 0;
    $('table-wrap').hidden = keys.length === 0;
  }

  function showKeys() {
    showOnly('keys');
    $('who').textContent = me.who;
    $('role').textContent = me.operator ? 'operator' : 'your keys';
    $('owner-filter-wrap').hidden = !me.operator;
    $('th-owner').hidden = !me.operator;
    $('keys-title').textContent = me.operator ? 'All keys' : 'Your keys';
    $('mode-note').textContent = (me.operator ? 'Operator console: the keys of every owner.' : 'The keys of your account; each works like your login for the scopes it holds.')
      + (cfg.stepUp ? ' Changes are confirmed with a one-time code.' : '');
  }

  let loading = 0;
  async function load() {
    const ticket = ++loading;
    const params = new URLSearchParams();
    const owner = $('owner-filter').value.trim();
    if (owner && (!me || me.operator)) params.set('owner', owner);
    if ($('include-revoked').checked) params.set('include_revoked', 'true');
    const [res, sc] = await Promise.all([call('GET', '/keys' + (params.toString() ? '?' + params : '')), call('GET', '/scopes')]);
    if (ticket !== loading) return false;  // a newer load is on its way
    if (res.status === 403 && !cfg.hostAuth) { signOut('This key may not manage API keys here: ' + problemText(res)); return false; }
    if (refused(res)) return false;
    if (!res.ok) { say('Could not load the keys: ' + problemText(res), true); return false; }
    me = {who: res.data.who, owner: res.data.owner, operator: res.data.operator};
    if (sc.ok) grant = {scopes: sc.data.scopes, any: sc.data.any};
    showKeys();
    render(res.data.keys);
    return true;
  }

  $('refresh').addEventListener('click', async () => { say('Refreshing…'); if (await load()) say('Up to date.'); });
  $('include-revoked').addEventListener('change', load);
  let filterTimer = null;
  $('owner-filter').addEventListener('input', () => { clearTimeout(filterTimer); filterTimer = setTimeout(load, 250); });

  // -- dialogs and field errors ----------------------------------------------------------
  function openDialog(d, focus) { d.showModal(); if (focus) focus.focus(); }
  function closeDialog(d) { if (d.open) d.close(); }
  for (const d of document.querySelectorAll('dialog')) {
    d.addEventListener('close', () => {
      if (document.querySelector('dialog[open]')) return;
      if (lastTrigger && document.contains(lastTrigger)) lastTrigger.focus();
      else if (!$('keys').hidden) $('new-key').focus();
    });
    for (const c of d.querySelectorAll('button.cancel')) c.addEventListener('click', () => closeDialog(d));
  }

  // One request per form at a time: its submit button waits for the answer.
  async function busy(form, send) {
    const button = form.querySelector('button[type=submit]');
    button.disabled = true;
    try { return await send(); } finally { button.disabled = false; }
  }

  function clearErrors(form) {
    for (const e of form.querySelectorAll('.error')) { e.textContent = ''; e.hidden = true; }
    for (const e of form.querySelectorAll('[aria-invalid]')) e.setAttribute('aria-invalid', 'false');
    for (const e of form.querySelectorAll('.policy')) e.hidden = true;
    for (const e of form.querySelectorAll('.chip.bad')) e.classList.remove('bad');
  }

  // API field -> the element it belongs to, per dialog (c: create, e: edit).
  const FIELDS = {
    c: {owner: 'c-owner', name: 'c-name', kind: 'c-kind', scopes: 'c-scopes', allowed_ips: 'c-ips', rate_limit: 'c-rate',
        expires_at: 'c-expiry', expires_in: 'c-expiry', passphrase: 'c-passphrase', passphrase2: 'c-passphrase2'},
    e: {name: 'e-name', scopes: 'e-scopes', allowed_ips: 'e-ips', rate_limit: 'e-rate'},
  };
  function fieldError(prefix, field, message) {
    const id = FIELDS[prefix][field];
    const target = id && $(id);
    if (target && !target.closest('[hidden]')) {
      const err = $(id + '-error');
      err.textContent = message; err.hidden = false;
      target.setAttribute('aria-invalid', 'true');
      (target.tagName === 'FIELDSET' ? target.querySelector('input:not([type=hidden])') : target).focus();
    } else {
      const err = $(prefix + '-form-error');
      err.textContent = message; err.hidden = false;
    }
  }
  // A 422 (409) names the refused field: shown there, with the API's own words.
  function settingsError(prefix, res) {
    const d = res.data;
    const field = d.field || null;
    fieldError(prefix, field, 'Refused' + (field ? ' (' + field + ')' : '') + ': ' + (d.detail || 'invalid value'));
    if (field === 'allowed_ips') {
      for (const chip of $(prefix + '-ip-list').children) if ((d.detail || '').includes("'" + chip.dataset.ip + "'")) chip.classList.add('bad');
      if (!cfg.allowPrivate) {
        const p = $(prefix + '-ips-policy');
        p.textContent = 'Why: private ranges (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, fc00::/7), loopback and link-local addresses are the same in every network, so they would not tie the key to yours. Trust the public address your clients use, as this server sees it. (An operator can allow private ranges with the policy.allow_private_ips setting.) Remove the marked entry to go on.';
        p.hidden = false;
      }
    }
  }
  // The outcome of a change that failed, shown in the dialog it came from.
  function failed(prefix, res) {
    if (refused(res)) return;
    if (res.status === 422 || res.status === 409) { settingsError(prefix, res); return; }
    fieldError(prefix, null, problemText(res));
  }

  // -- scopes, trusted IPs, rate limit: the fields both dialogs share ------------------------
  function buildScopes(prefix, selected, held) {
    const box = $(prefix + '-scope-list');
    box.replaceChildren();
    const offered = grant.scopes.map((s) => s.name);
    const names = [...offered, ...held.filter((s) => !offered.includes(s) && !grant.any)];
    names.forEach((name, i) => {
      const info = grant.scopes.find((s) => s.name === name);
      const text = info ? info.description : 'On this key already: you may keep it, but not add it back once removed.';
      const descId = prefix + '-scope-desc-' + i;
      const input = el('input', {type: 'checkbox', name: 'scope', value: name, 'aria-describedby': text ? descId : null});
      input.checked = selected.includes(name);
      box.append(el('div', {class: 'scope'}, el('label', {class: 'check'}, input, el('span', {class: 'mono', text: name})),
                    text ? el('span', {class: 'hint', id: descId, text}) : null));
    });
    $(prefix + '-scopes-none').hidden = names.length > 0 || grant.any;
    $(prefix + '-scopes-extra-wrap').hidden = !grant.any;
    $(prefix + '-scopes-extra').value = grant.any ? selected.filter((s) => !names.includes(s)).join(' ') : '';
  }
  function readScopes(prefix) {
    const out = [];
    for (const box of $(prefix + '-scope-list').querySelectorAll('input[name=scope]:checked')) out.push(box.value);
    if (grant.any) for (const s of $(prefix + '-scopes-extra').value.split(/[\s,]+/)) if (s && !out.includes(s)) out.push(s);
    return out;
  }

  const ips = {c: [], e: []};
  function drawIps(prefix) {
    const list = $(prefix + '-ip-list');
    list.replaceChildren();
    for (const ip of ips[prefix]) {
      const chip = el('li', {class: 'chip', 'data-ip': ip}, el('span', {class: 'mono', text: ip}));
      chip.append(el('button', {type: 'button', 'aria-label': 'Remove ' + ip, text: '×', onclick: () => {
        ips[prefix] = ips[prefix].filter((x) => x !== ip);
        drawIps(prefix);
        $(prefix + '-ip').focus();
      }}));
      list.append(chip);
    }
    $(prefix + '-ip-empty').hidden = ips[prefix].length > 0;
    ipsNote(prefix);
    if (prefix === 'c') expiryNote();
  }
  const IP_SHAPE = /^[0-9A-Fa-f:.]+(\/[0-9]{1,3})?$/;
  function addIps(prefix) {  // false: the typed text is not an address (it stays, marked)
    const input = $(prefix + '-ip');
    const err = $(prefix + '-ips-error');
    err.hidden = true; $(prefix + '-ips').setAttribute('aria-invalid', 'false');
    for (const item of input.value.split(/[\s,]+/).filter(Boolean)) {
      if (!IP_SHAPE.test(item)) {
        err.textContent = '"' + item + '" is not an IP address or CIDR range (such as 203.0.113.7 or 2001:db8::/48).';
        err.hidden = false; $(prefix + '-ips').setAttribute('aria-invalid', 'true');
        input.value = item; input.focus();
        return false;
      }
      if (!ips[prefix].includes(item)) ips[prefix].push(item);
    }
    input.value = '';
    drawIps(prefix);
    return true;
  }
  function ipsNote(prefix) {
    const parts = [];
    if (!cfg.allowPrivate) parts.push('Public addresses only: this server refuses private, loopback and link-local ranges.');
    if (cfg.maxDays && !ips[prefix].length) parts.push('Without trusted IPs a key expires within ' + cfg.maxDays + ' days.');
    $(prefix + '-ips-note').textContent = parts.join(' ');
  }
  for (const p of ['c', 'e']) {
    $(p + '-ip-add').addEventListener('click', () => { addIps(p); $(p + '-ip').focus(); });
    $(p + '-ip').addEventListener('keydown', (ev) => { if (ev.key === 'Enter') { ev.preventDefault(); addIps(p); } });
    $(p + '-rate').addEventListener('change', () => {
      const custom = $(p + '-rate').value === 'custom';
      $(p + '-rate-custom').hidden = !custom;
      if (custom) $(p + '-rate-custom').focus();
    });
  }
  function setRate(prefix, value) {
    const select = $(prefix + '-rate');
    const preset = [...select.options].some((o) => o.value === (value || '') && o.value !== 'custom');
    select.value = preset ? (value || '') : 'custom';
    $(prefix + '-rate-custom').value = preset ? '' : value;
    $(prefix + '-rate-custom').hidden = preset;
  }
  function readRate(prefix) {
    const v = $(prefix + '-rate').value;
    return v === 'custom' ? ($(prefix + '-rate-custom').value.trim() || null) : (v || null);
  }

  // -- the secret, shown once ------------------------------------------------------------------
  const SECRETS = ['secret-token', 'secret-access', 'secret-secret'];
  function showSecret(data, title) {
    const key = data.key;
    const signing = key.kind === 'signing';
    const h = cfg.headers;
    $('secret-title').textContent = title;
    $('secret-token-row').hidden = signing;
    $('secret-access-row').hidden = !signing;
    $('secret-secret-row').hidden = !signing;
    $('secret-token').value = signing ? '' : (data.token || '');
    $('secret-access').value = signing ? key.id : '';
    $('secret-secret').value = signing ? (data.secret || '') : '';
    $('secret-usage').textContent = (signing
      ? 'Send the access key in the ' + h.signing_key + ' header and sign each request with the secret.'
      : 'Send it as "Authorization: Bearer <key>" or in the ' + h.key + ' header.')
      + (key.has_passphrase ? ' Requests also need the passphrase you set, in the ' + (signing ? h.signing_passphrase : h.passphrase) + ' header.' : '');
    $('copy-status').textContent = '';
    openDialog($('secret-dialog'), $(signing ? 'secret-secret-row' : 'secret-token-row').querySelector('button'));
  }
  for (const b of document.querySelectorAll('button.copy')) {
    b.addEventListener('click', async () => {
      const input = $(b.dataset.copy);
      let done = false;
      try { await navigator.clipboard.writeText(input.value); done = true; } catch (e) { done = false; }
      if (!done) { input.focus(); input.select(); try { done = document.execCommand('copy'); } catch (e) { done = false; } }
      $('copy-status').textContent = done ? 'Copied the ' + b.dataset.what + ' to the clipboard.' : 'Copy failed: select the ' + b.dataset.what + ' and copy it by hand.';
    });
  }
  // The close event comes a task later; the secret leaves the page at once.
  function forgetSecrets() { for (const id of SECRETS) $(id).value = ''; $('copy-status').textContent = ''; }
  $('secret-done').addEventListener('click', () => { forgetSecrets(); closeDialog($('secret-dialog')); });
  // However the dialog closes (button, Escape), the secret leaves the page.
  $('secret-dialog').addEventListener('close', forgetSecrets);

  // -- create ----------------------------------------------------------------------------------
  const DAYS = {'7d': 7, '30d': 30, '90d': 90, '365d': 365, never: Infinity};
  function chosenDays() {
    const v = $('c-expiry').value;
    if (v !== 'custom') return DAYS[v];
    const day = $('c-expires-date').value;
    return day ? (new Date(day + 'T23:59:59Z') - new Date()) / 86400000 : 0;
  }
  function expiryNote() {
    const note = $('c-expiry-note');
    if (!cfg.maxDays) { note.hidden = true; return; }
    const open = !ips.c.length;
    const longer = open && chosenDays() > cfg.maxDays;
    note.textContent = open
      ? 'Keys without trusted IPs expire after at most ' + cfg.maxDays + ' days (this server\'s policy)'
        + (longer ? ': this key will expire in ' + cfg.maxDays + ' days. Add trusted IPs to keep it longer.' : '.')
      : 'This key has trusted IPs, so the ' + cfg.maxDays + '-day limit for keys without them does not apply.';
    note.classList.toggle('warn', longer);
    note.hidden = false;
  }
  function passphraseRules() {
    const signing = document.querySelector('input[name=kind]:checked').value === 'signing';
    $('c-passphrase-rules').textContent = '8 to 256 characters. Clients send it with every request, in the '
      + (signing ? cfg.headers.signing_passphrase : cfg.headers.passphrase) + ' header. It is stored hashed: no one can show it to you again.';
  }
  for (const r of document.querySelectorAll('input[name=kind]')) r.addEventListener('change', passphraseRules);
  $('c-expiry').addEventListener('change', () => {
    const custom = $('c-expiry').value === 'custom';
    $('c-expires-date').hidden = !custom;
    if (custom) $('c-expires-date').focus();
    expiryNote();
  });
  $('c-expires-date').addEventListener('change', expiryNote);

  $('new-key').addEventListener('click', (ev) => {
    lastTrigger = ev.currentTarget;
    const form = $('create-form');
    form.reset(); clearErrors(form);
    $('c-owner-wrap').hidden = !me.operator;
    $('c-rate-wrap').hidden = !me.operator;  // limits are the operator's to set
    $('c-kind-signing').disabled = !cfg.signing;
    $('c-kind-note').hidden = cfg.signing;
    $('c-expires-date').hidden = true;
    setRate('c', null);
    buildScopes('c', [], []);
    ips.c = []; drawIps('c');
    passphraseRules();
    const owner = me.operator ? $('owner-filter').value.trim() : '';
    if (owner) $('c-owner').value = owner;
    openDialog($('create-dialog'), me.operator && !owner ? $('c-owner') : $('c-name'));
  });

  function clearPassphrases() { $('c-passphrase').value = ''; $('c-passphrase2').value = ''; }
  $('create-dialog').addEventListener('close', clearPassphrases);

  $('create-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const form = $('create-form');
    clearErrors(form);
    if ($('c-ip').value.trim() && !addIps('c')) return;
    const body = {
      name: $('c-name').value.trim(),
      scopes: readScopes('c'),
      allowed_ips: ips.c.slice(),
    };
    if (me.operator) body.owner = $('c-owner').value.trim();
    if (me.operator && !body.owner) { fieldError('c', 'owner', 'Whose key is it? Give an owner.'); return; }
    if (!body.name) { fieldError('c', 'name', 'Give the key a name.'); return; }
    const kind = document.querySelector('input[name=kind]:checked').value;
    if (kind !== 'bearer') body.kind = kind;
    const expiry = $('c-expiry').value;
    if (expiry === 'custom') {
      const day = $('c-expires-date').value;
      if (!day) { fieldError('c', 'expires_at', 'Pick a date.'); return; }
      body.expires_at = day + 'T23:59:59Z';
    } else if (expiry !== 'never') {
      body.expires_in = expiry;
    }
    const rate = me.operator ? readRate('c') : null;
    if (rate) body.rate_limit = rate;
    const p1 = $('c-passphrase').value, p2 = $('c-passphrase2').value;
    if (p1 || p2) {
      const n = [...p1].length;
      if (n < 8 || n > 256) { fieldError('c', 'passphrase', 'A passphrase has 8 to 256 characters (this one has ' + n + ').'); return; }
      if (p1 !== p2) { fieldError('c', 'passphrase2', 'The two passphrases differ: type the same one twice.'); return; }
      body.passphrase = p1;
    }
    const res = await busy(form, () => change('POST', '/keys', body, 'create'));
    if (res.status === 201) {
      clearPassphrases();
      closeDialog($('create-dialog'));
      lastTrigger = $('new-key');
      await load();
      say('Key "' + res.data.key.name + '" created.');
      showSecret(res.data, res.data.key.kind === 'signing' ? 'Copy your new signing key' : 'Copy your new key');
    } else {
      failed('c', res);
    }
  });

  // -- edit ------------------------------------------------------------------------------------
  let editing = null;
  function openEdit(id) {
    const key = keysById.get(id);
    if (!key) return;
    editing = key;
    const form = $('edit-form');
    clearErrors(form);
    $('edit-title').textContent = 'Edit key ' + key.name;
    $('e-name').value = key.name;
    buildScopes('e', key.scopes, key.scopes);
    ips.e = key.allowed_ips.slice(); drawIps('e'); $('e-ip').value = '';
    setRate('e', key.rate_limit);
    $('e-rate-wrap').hidden = !me.operator;
    openDialog($('edit-dialog'), $('e-name'));
  }
  const same = (a, b) => a.length === b.length && a.every((x) => b.includes(x));
  $('edit-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearErrors($('edit-form'));
    if ($('e-ip').value.trim() && !addIps('e')) return;
    const key = editing;
    const body = {};
    const name = $('e-name').value.trim();
    if (!name) { fieldError('e', 'name', 'Give the key a name.'); return; }
    if (name !== key.name) body.name = name;
    const scopes = readScopes('e');
    if (!same(scopes, key.scopes)) body.scopes = scopes;
    if (!same(ips.e, key.allowed_ips)) body.allowed_ips = ips.e.slice();
    const rate = me.operator ? readRate('e') : (key.rate_limit || null);
    if (rate !== (key.rate_limit || null)) body.rate_limit = rate;
    if (!Object.keys(body).length) { closeDialog($('edit-dialog')); say('Nothing to save: key "' + key.name + '" is unchanged.'); return; }
    const res = await busy($('edit-form'), () => change('PATCH', '/keys/' + encodeURIComponent(key.id), body, 'update'));
    if (res.ok) {
      closeDialog($('edit-dialog'));
      await load();
      say('Key "' + res.data.name + '" saved.');
    } else {
      failed('e', res);
    }
  });

  // -- confirmations: rotate, suspend, revoke, delete; resume ---------------------------------------
  let confirmAction = null;
  function confirmDialog(key, title, text, okText, withGrace, ownText, action) {
    $('confirm-title').textContent = title;
    $('confirm-text').textContent = text;
    $('confirm-ok').textContent = okText;
    $('confirm-ok').className = withGrace ? 'primary' : 'danger';
    $('grace-wrap').hidden = !withGrace;
    const own = key.id === ownId();
    $('confirm-own').textContent = own ? ownText : '';
    $('confirm-own').hidden = !own;
    clearErrors($('confirm-form'));
    confirmAction = action;
    openDialog($('confirm-dialog'), withGrace ? $('grace') : $('confirm-dialog').querySelector('button.cancel'));
  }
  $('confirm-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearErrors($('confirm-form'));
    const res = await busy($('confirm-form'), confirmAction);
    if (res.ok) { closeDialog($('confirm-dialog')); return; }
    if (refused(res)) return;
    const err = $('confirm-error'); err.textContent = problemText(res); err.hidden = false;
  });

  const keyPath = (id, tail) => '/keys/' + encodeURIComponent(id) + (tail || '');
  // After a change to the key this page signs in with: say what happened.
  function afterOwn(key, verb) {
    signOut('You ' + verb + ' the key you were signed in with ("' + key.name + '", ' + key.id + '), so this page can no longer use it. Sign in with another admin key.');
  }

  function confirmRotate(id) {
    const key = keysById.get(id);
    confirmDialog(key, 'Rotate key ' + key.name + '?', 'A new ' + (key.kind === 'signing' ? 'secret' : 'key') + ' is issued now, shown once. Choose how long the old one keeps working, so clients can switch.',
      'Rotate key', true, 'This is the key you are signed in with: the page switches to the new one.', async () => {
        const grace = $('grace').value;
        const res = await change('POST', keyPath(id, '/rotate'), {grace: grace === '0' ? 0 : grace}, 'rotate');
        if (res.ok) {
          if (id === ownId() && res.data.token) sessionStorage.setItem(STORE, res.data.token);
          closeDialog($('confirm-dialog'));
          await load();
          say('Key "' + key.name + '" rotated' + (grace === '0' ? '.' : '; the old one works for ' + $('grace').selectedOptions[0].textContent + '.'));
          showSecret(res.data, 'Copy the rotated key');
        }
        return res;
      });
  }
  async function resume(id) {
    const key = keysById.get(id);
    const res = await change('POST', keyPath(id, '/resume'), undefined, 'resume');
    if (res.ok) { await load(); say('Key "' + key.name + '" resumed.'); }
    else if (!refused(res)) {
      // Refused for the key's state (revoked, or an operator's suspension meanwhile): show it as it is now.
      if (res.status === 409 || res.status === 422) await load();
      say('Key "' + key.name + '" was not resumed: ' + problemText(res), true);
    }
  }

  // Suspend, revoke, delete: asked first; done to the key this page signs in
  // with, they sign the page out, and it says why.
  const ENDS = {
    suspend: ['POST', '/suspend', 'suspended', 'suspending', () => 'Requests with this key are refused (401 suspended_key) until you resume it. Nothing else about the key changes.'],
    revoke: ['POST', '/revoke', 'revoked', 'revoking', () => 'Requests with this key are refused from now on, for good. The key stays listed as revoked.'],
    delete: ['DELETE', '', 'deleted', 'deleting', (key) => 'Key ' + key.id + ' is removed and requests with it are refused at once. This cannot be undone.'],
  };
  function confirmEnd(action, id) {
    const key = keysById.get(id);
    const [method, tail, done, doing, text] = ENDS[action];
    const verb = action[0].toUpperCase() + action.slice(1) + ' key';
    confirmDialog(key, verb + ' ' + key.name + '?', text(key), verb, false,
      'This is the key you are signed in with: ' + doing + ' it signs you out of this page.', async () => {
        const res = await change(method, keyPath(id, tail), undefined, action);
        if (res.ok) {
          if (id === ownId()) { afterOwn(key, done); return res; }
          if (action === 'delete') lastTrigger = $('new-key');
          await load(); say('Key "' + key.name + '" ' + done + '.');
        }
        return res;
      });
  }

  if (cfg.hostAuth || sessionStorage.getItem(STORE)) load(); else showSignin('');
})();
"""
