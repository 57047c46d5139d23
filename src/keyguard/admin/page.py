# ruff: noqa: E501 - the page is HTML, CSS and JS in strings
"""The "API Keys" page: one server-rendered HTML document, inline CSS and JS.

No build step, no asset from anywhere: the page is this string. Its script
talks to the JSON API next to it. Authentication: the page asks for an admin
key once, keeps it in `sessionStorage` (this tab only) and sends it as
`Authorization: Bearer` on each fetch; no cookie is involved, so there is
nothing for another site to forge. On cookie-based hosts (`authorize`), fetches
go out with the host's cookies and an `X-Requested-With` header, which the API
requires on unsafe methods there. The inline script and style run under a
per-response CSP nonce; data from the API is only ever put in the page as
text (`textContent`), never as HTML.
"""

from __future__ import annotations

import html
import json
import secrets
from collections.abc import Sequence


def render_page(
    *,
    title: str,
    base: str,
    scope_choices: Sequence[str],
    host_auth: bool,
    max_days: int | None = None,
) -> tuple[str, str]:
    """(html, nonce) for one response."""
    nonce = secrets.token_urlsafe(16)
    config = {
        "base": base.rstrip("/"),
        "scopes": list(scope_choices),
        "hostAuth": host_auth,
        "maxDays": max_days,
    }
    # "<" escaped so no value can close the <script> element.
    config_json = json.dumps(config).replace("<", "\\u003c")
    scope_boxes = "".join(
        f'<label class="check"><input type="checkbox" name="scope" value="{html.escape(s)}"> '
        f"<span>{html.escape(s)}</span></label>"
        for s in scope_choices
    )
    return (
        _TEMPLATE.replace("{{title}}", html.escape(title))
        .replace("{{nonce}}", nonce)
        .replace("{{config}}", config_json)
        .replace("{{scope_boxes}}", scope_boxes)
        .replace("{{css}}", _CSS)
        .replace("{{js}}", _JS)
    ), nonce


_TEMPLATE = """<!doctype html>
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
  <button type="button" id="signout" class="link" hidden>Sign out</button>
</header>
<main id="main" tabindex="-1">
  <section id="signin" hidden aria-labelledby="signin-title">
    <h2 id="signin-title">Sign in</h2>
    <p id="signin-help">Paste an API key that holds the <code>keyguard:admin</code> scope.
      It is kept in this browser tab only and sent with each request.</p>
    <form id="signin-form" novalidate>
      <label for="admin-key">Admin key</label>
      <input id="admin-key" name="admin-key" type="password" autocomplete="off"
             spellcheck="false" required aria-describedby="signin-error">
      <p class="error" id="signin-error" role="alert" hidden></p>
      <div class="actions"><button type="submit" class="primary">Sign in</button></div>
    </form>
  </section>

  <section id="keys" hidden aria-labelledby="keys-title">
    <div class="toolbar">
      <h2 id="keys-title">Keys</h2>
      <button type="button" id="new-key" class="primary">Create key</button>
    </div>
    <div class="filters">
      <label id="owner-filter-wrap">Owner
        <input id="owner-filter" type="search" autocomplete="off" placeholder="all owners">
      </label>
      <label class="check"><input id="include-revoked" type="checkbox"> <span>Show revoked keys</span></label>
    </div>
    <p id="status" role="status" aria-live="polite"></p>
    <div class="table-wrap">
      <table id="key-table">
        <caption class="sr-only">API keys</caption>
        <thead><tr>
          <th scope="col">Name</th><th scope="col">Key</th><th scope="col">Scopes</th>
          <th scope="col">Trusted IPs</th><th scope="col">Created</th><th scope="col">Last used</th>
          <th scope="col">Expires</th><th scope="col">Status</th><th scope="col">Actions</th>
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
             aria-describedby="c-name-error">
      <p class="error" id="c-name-error" hidden></p>
    </div>
    <fieldset class="field" id="c-scopes" aria-describedby="c-scopes-error">
      <legend>Scopes</legend>
      <div class="checks">{{scope_boxes}}</div>
      <label for="c-scopes-extra">Other scopes <span class="hint">(separated by spaces or commas)</span></label>
      <input id="c-scopes-extra" autocomplete="off" spellcheck="false">
      <p class="error" id="c-scopes-error" hidden></p>
    </fieldset>
    <div class="field">
      <label for="c-ips">Trusted IPs <span class="hint">(one address or CIDR per line; empty: any address)</span></label>
      <textarea id="c-ips" rows="3" spellcheck="false" aria-describedby="c-ips-note c-ips-error"></textarea>
      <p class="note" id="c-ips-note"></p>
      <p class="error" id="c-ips-error" hidden></p>
    </div>
    <div class="field">
      <label for="c-expiry">Expires</label>
      <select id="c-expiry" aria-describedby="c-expiry-error">
        <option value="30d">In 30 days</option>
        <option value="90d" selected>In 90 days</option>
        <option value="365d">In 1 year</option>
        <option value="never">Never</option>
        <option value="custom">On a date…</option>
      </select>
      <label for="c-expires-date" class="sr-only">Expiry date</label>
      <input id="c-expires-date" type="date" hidden>
      <p class="error" id="c-expiry-error" hidden></p>
    </div>
    <div class="field">
      <label for="c-passphrase">Passphrase <span class="hint">(optional, 8+ characters, sent in the KG-Passphrase header)</span></label>
      <input id="c-passphrase" type="password" autocomplete="new-password" aria-describedby="c-passphrase-error">
      <p class="error" id="c-passphrase-error" hidden></p>
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
  <p class="warning" id="secret-warning"><strong>This is the only time this key is shown.</strong>
    Store it in a secret manager now. If you lose it, rotate the key to get a new one.</p>
  <label for="secret-value" id="secret-label">Key</label>
  <div class="copyrow">
    <input id="secret-value" readonly spellcheck="false" autocomplete="off">
    <button type="button" id="copy-secret" class="primary">Copy</button>
  </div>
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
    <fieldset class="field" id="e-scopes" aria-describedby="e-scopes-error">
      <legend>Scopes</legend>
      <div class="checks">{{scope_boxes}}</div>
      <label for="e-scopes-extra">Other scopes <span class="hint">(separated by spaces or commas)</span></label>
      <input id="e-scopes-extra" autocomplete="off" spellcheck="false">
      <p class="error" id="e-scopes-error" hidden></p>
    </fieldset>
    <div class="field">
      <label for="e-ips">Trusted IPs <span class="hint">(one address or CIDR per line; empty: any address)</span></label>
      <textarea id="e-ips" rows="3" spellcheck="false" aria-describedby="e-ips-error"></textarea>
      <p class="error" id="e-ips-error" hidden></p>
    </div>
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

<script type="application/json" id="kg-config" nonce="{{nonce}}">{{config}}</script>
<script nonce="{{nonce}}">{{js}}</script>
</body>
</html>
"""

_CSS = """
:root { --fg:#1b1f24; --muted:#57606a; --bg:#fff; --line:#d0d7de; --soft:#f6f8fa;
  --accent:#0b5cad; --danger:#b42318; --ok:#1a7f37; --warn-bg:#fff4e5; --warn-line:#d97706;
  color-scheme: light dark; }
@media (prefers-color-scheme: dark) { :root { --fg:#e6edf3; --muted:#9da7b1; --bg:#0d1117;
  --line:#30363d; --soft:#161b22; --accent:#4493f8; --danger:#f85149; --ok:#3fb950;
  --warn-bg:#2d2006; --warn-line:#d29922; } }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color:var(--fg); background:var(--bg); }
.skip { position:absolute; left:-999px; } .skip:focus { left:8px; top:8px; background:var(--bg); padding:4px 8px; }
.sr-only { position:absolute; width:1px; height:1px; overflow:hidden; clip:rect(0 0 0 0); white-space:nowrap; }
.bar { display:flex; align-items:center; justify-content:space-between; padding:12px 20px;
  border-bottom:1px solid var(--line); background:var(--soft); }
h1 { font-size:1.25rem; margin:0; } h2 { font-size:1.1rem; margin:0 0 12px; }
main { padding:20px; max-width:1200px; margin:0 auto; }
main:focus { outline:none; }
.toolbar { display:flex; align-items:center; justify-content:space-between; gap:12px; }
.toolbar h2 { margin:0; }
.filters { display:flex; flex-wrap:wrap; gap:16px; align-items:center; margin:12px 0; }
.filters input[type=search] { margin-left:6px; }
button { font:inherit; padding:6px 12px; border-radius:6px; border:1px solid var(--line);
  background:var(--soft); color:var(--fg); cursor:pointer; }
button:hover { border-color:var(--muted); }
button.primary { background:var(--accent); border-color:var(--accent); color:#fff; }
button.danger { background:var(--danger); border-color:var(--danger); color:#fff; }
button.link { background:none; border:none; color:var(--accent); text-decoration:underline; }
button.small { padding:2px 8px; font-size:.875rem; }
:focus-visible { outline:3px solid var(--accent); outline-offset:2px; }
input, select, textarea { font:inherit; padding:6px 8px; border:1px solid var(--line);
  border-radius:6px; background:var(--bg); color:var(--fg); max-width:100%; }
input[aria-invalid=true], textarea[aria-invalid=true], select[aria-invalid=true],
fieldset[aria-invalid=true] { border-color:var(--danger); }
.field { display:flex; flex-direction:column; gap:4px; margin:0 0 14px; border:0; padding:0; }
fieldset.field { border:1px solid var(--line); border-radius:6px; padding:8px 12px; }
.checks { display:flex; flex-wrap:wrap; gap:4px 16px; }
.check { display:inline-flex; gap:6px; align-items:center; }
.hint, .note { color:var(--muted); font-size:.875rem; font-weight:normal; margin:0; }
.error { color:var(--danger); font-size:.875rem; margin:2px 0 0; }
.warning { background:var(--warn-bg); border-left:4px solid var(--warn-line); padding:8px 12px; }
.actions { display:flex; justify-content:flex-end; gap:8px; margin-top:12px; }
#signin { max-width:480px; } #signin form { display:flex; flex-direction:column; gap:6px; }
.table-wrap { overflow-x:auto; }
table { border-collapse:collapse; width:100%; }
th, td { text-align:left; padding:8px 10px; border-bottom:1px solid var(--line); vertical-align:top; }
th { font-size:.8rem; text-transform:uppercase; letter-spacing:.03em; color:var(--muted); }
code, .mono, #secret-value { font-family:ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size:.875rem; }
.tag { display:inline-block; padding:0 6px; margin:1px 2px 1px 0; border-radius:10px;
  border:1px solid var(--line); background:var(--soft); font-size:.8rem; }
.status-active { color:var(--ok); font-weight:600; } .status-revoked, .status-expired { color:var(--danger); font-weight:600; }
.row-actions { display:flex; flex-wrap:wrap; gap:4px; }
dialog { border:1px solid var(--line); border-radius:10px; padding:20px; width:min(560px, 96vw);
  color:var(--fg); background:var(--bg); }
dialog::backdrop { background:rgba(0,0,0,.45); }
.copyrow { display:flex; gap:8px; } .copyrow input { flex:1; min-width:0; }
#status:empty { display:none; }
@media (max-width: 760px) {
  main { padding:12px; }
  thead { position:absolute; width:1px; height:1px; overflow:hidden; clip:rect(0 0 0 0); }
  table, tbody, tr, td { display:block; width:100%; }
  tr { border:1px solid var(--line); border-radius:8px; margin:0 0 12px; padding:6px 0; }
  td { border:0; padding:4px 12px; display:grid; grid-template-columns:7.5em 1fr; gap:8px; }
  td::before { content:attr(data-label); color:var(--muted); font-size:.8rem; text-transform:uppercase; }
}
"""

_JS = r"""
(() => {
  'use strict';
  const cfg = JSON.parse(document.getElementById('kg-config').textContent);
  const API = cfg.base + '/api/keys';
  const STORE = 'keyguard-admin-key';
  const $ = (id) => document.getElementById(id);
  let viewerOwner = null;
  let keysById = new Map();
  let lastTrigger = null;

  function headers(json) {
    const h = {'X-Requested-With': 'keyguard-admin', 'Accept': 'application/json'};
    if (json) h['Content-Type'] = 'application/json';
    const key = sessionStorage.getItem(STORE);
    if (key) h['Authorization'] = 'Bearer ' + key;
    return h;
  }

  async function call(method, url, body) {
    const init = {method, headers: headers(body !== undefined), credentials: 'same-origin', cache: 'no-store'};
    if (body !== undefined) init.body = JSON.stringify(body);
    let res;
    try { res = await fetch(url, init); }
    catch (e) { return {ok: false, status: 0, data: {detail: 'The server cannot be reached.'}}; }
    let data = null;
    if (res.status !== 204) { try { data = await res.json(); } catch (e) { data = null; } }
    return {ok: res.ok, status: res.status, data: data || {}};
  }

  function say(text) { $('status').textContent = text; }

  // -- sign in ---------------------------------------------------------------
  function showSignin(message) {
    $('keys').hidden = true;
    $('signout').hidden = !sessionStorage.getItem(STORE);
    $('signin').hidden = false;
    const err = $('signin-error');
    err.textContent = message || '';
    err.hidden = !message;
    $('admin-key').setAttribute('aria-invalid', message ? 'true' : 'false');
    $('admin-key').focus();
  }

  $('signin-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const value = $('admin-key').value.trim();
    if (!value) { showSignin('Paste an admin key.'); return; }
    sessionStorage.setItem(STORE, value);
    $('admin-key').value = '';
    load();
  });

  $('signout').addEventListener('click', () => {
    sessionStorage.removeItem(STORE);
    keysById = new Map();
    $('rows').replaceChildren();
    showSignin('');
  });

  // -- the table ---------------------------------------------------------------
  function when(iso, empty) {
    if (!iso) { const s = document.createElement('span'); s.textContent = empty; s.className = 'hint'; return s; }
    const t = document.createElement('time');
    t.dateTime = iso;
    t.textContent = new Date(iso).toLocaleString(undefined, {dateStyle: 'medium', timeStyle: 'short'});
    t.title = iso;
    return t;
  }

  function tags(list, empty) {
    const frag = document.createDocumentFragment();
    if (!list.length) { const s = document.createElement('span'); s.className = 'hint'; s.textContent = empty; frag.append(s); }
    for (const item of list) { const s = document.createElement('span'); s.className = 'tag'; s.textContent = item; frag.append(s); }
    return frag;
  }

  function statusOf(key) {
    if (key.revoked_at) return 'revoked';
    if (key.expires_at && new Date(key.expires_at) <= new Date()) return 'expired';
    return 'active';
  }

  function cell(label, content, cls) {
    const td = document.createElement('td');
    td.dataset.label = label;
    if (cls) td.className = cls;
    const box = document.createElement('div');  // one grid item on narrow screens
    if (typeof content === 'string') box.textContent = content; else box.append(content);
    td.append(box);
    return td;
  }

  function button(text, label, cls, handler) {
    const b = document.createElement('button');
    b.type = 'button'; b.textContent = text; b.className = 'small ' + (cls || '');
    b.setAttribute('aria-label', label);
    b.addEventListener('click', (ev) => { lastTrigger = ev.currentTarget; handler(); });
    return b;
  }

  function render(keys) {
    const rows = $('rows');
    rows.replaceChildren();
    keysById = new Map(keys.map((k) => [k.id, k]));
    for (const key of keys) {
      const tr = document.createElement('tr');
      tr.dataset.keyId = key.id;
      const state = statusOf(key);
      const name = document.createElement('strong'); name.textContent = key.name;
      const nameCell = cell('Name', name);
      if (!viewerOwner) { const o = document.createElement('div'); o.className = 'hint'; o.textContent = key.owner; nameCell.firstChild.append(o); }
      tr.append(nameCell);
      tr.append(cell('Key', key.hint, 'mono'));
      tr.append(cell('Scopes', tags(key.scopes, 'none')));
      tr.append(cell('Trusted IPs', tags(key.allowed_ips, 'any')));
      tr.append(cell('Created', when(key.created_at, '')));
      tr.append(cell('Last used', when(key.last_used_at, 'never')));
      tr.append(cell('Expires', when(key.expires_at, 'never')));
      const st = document.createElement('span');
      st.className = 'status-' + state;
      st.textContent = state[0].toUpperCase() + state.slice(1);
      tr.append(cell('Status', st));
      const actions = document.createElement('div');
      actions.className = 'row-actions';
      if (state !== 'revoked') {
        actions.append(button('Edit', 'Edit key ' + key.name, '', () => openEdit(key.id)));
        actions.append(button('Rotate', 'Rotate key ' + key.name, '', () => confirmRotate(key.id)));
        actions.append(button('Revoke', 'Revoke key ' + key.name, '', () => confirmRevoke(key.id)));
      }
      actions.append(button('Delete', 'Delete key ' + key.name, 'danger', () => confirmDelete(key.id)));
      tr.append(cell('Actions', actions));
      rows.append(tr);
    }
    $('empty').hidden = keys.length > 0;
    $('key-table').hidden = keys.length === 0;
  }

  async function load() {
    const params = new URLSearchParams();
    const owner = $('owner-filter').value.trim();
    if (owner) params.set('owner', owner);
    if ($('include-revoked').checked) params.set('include_revoked', 'true');
    const res = await call('GET', API + (params.toString() ? '?' + params : ''));
    if (res.status === 401 || res.status === 403) {
      const hadKey = !!sessionStorage.getItem(STORE);
      if (hadKey) sessionStorage.removeItem(STORE);
      const why = res.status === 403 ? 'This key may not manage API keys (it needs the keyguard:admin scope).'
                                      : 'That key was not accepted: ' + (res.data.detail || 'sign in again.');
      showSignin(hadKey ? why : (cfg.hostAuth ? 'You are not signed in to manage keys here.' : ''));
      return false;
    }
    if (!res.ok) { say(res.data.detail || 'Could not load the keys.'); return false; }
    viewerOwner = res.data.owner;
    $('owner-filter-wrap').hidden = !!viewerOwner;
    $('signin').hidden = true;
    $('keys').hidden = false;
    $('signout').hidden = !sessionStorage.getItem(STORE);
    render(res.data.keys);
    return true;
  }

  $('include-revoked').addEventListener('change', load);
  let filterTimer = null;
  $('owner-filter').addEventListener('input', () => { clearTimeout(filterTimer); filterTimer = setTimeout(load, 250); });

  // -- dialogs and field errors -------------------------------------------------------
  function openDialog(d, focus) {
    d.showModal();
    if (focus) focus.focus();
  }
  function closeDialog(d) {
    d.close();
  }
  for (const d of document.querySelectorAll('dialog')) {
    d.addEventListener('close', () => {
      if (document.querySelector('dialog[open]')) return;
      if (lastTrigger && document.contains(lastTrigger)) lastTrigger.focus();
      else $('new-key').focus();
    });
    for (const c of d.querySelectorAll('button.cancel')) c.addEventListener('click', () => closeDialog(d));
  }

  function clearErrors(form) {
    for (const e of form.querySelectorAll('.error')) { e.textContent = ''; e.hidden = true; }
    for (const e of form.querySelectorAll('[aria-invalid]')) e.setAttribute('aria-invalid', 'false');
  }

  // API field name -> [input, error element] per form; anything else goes to the form error.
  const FIELDS = {
    c: {owner: 'c-owner', name: 'c-name', scopes: 'c-scopes', allowed_ips: 'c-ips',
        expires_at: 'c-expiry', expires_in: 'c-expiry', passphrase: 'c-passphrase'},
    e: {name: 'e-name', scopes: 'e-scopes', allowed_ips: 'e-ips'},
  };

  function fieldError(prefix, field, message) {
    const id = FIELDS[prefix][field];
    const target = id && $(id);
    if (target && !target.closest('[hidden]')) {
      const err = $(id + '-error');
      err.textContent = message; err.hidden = false;
      target.setAttribute('aria-invalid', 'true');
      (target.tagName === 'FIELDSET' ? target.querySelector('input') : target).focus();
    } else {
      const err = $(prefix + '-form-error');
      err.textContent = (field ? field.replace('_', ' ') + ': ' : '') + message; err.hidden = false;
    }
  }

  function problemText(res) { return res.data.detail || ('Request failed (' + res.status + ').'); }

  function readScopes(fieldset, extra) {
    const out = [];
    for (const box of fieldset.querySelectorAll('input[name=scope]:checked')) out.push(box.value);
    for (const s of extra.value.split(/[\s,]+/)) if (s && !out.includes(s)) out.push(s);
    return out;
  }
  function setScopes(fieldset, extra, scopes) {
    const known = new Set();
    for (const box of fieldset.querySelectorAll('input[name=scope]')) { box.checked = scopes.includes(box.value); known.add(box.value); }
    extra.value = scopes.filter((s) => !known.has(s)).join(' ');
  }
  function readIps(area) { return area.value.split(/[\s,]+/).filter(Boolean); }

  // -- secret, shown once -------------------------------------------------------------
  function showSecret(data, title) {
    $('secret-title').textContent = title;
    $('secret-label').textContent = data.token ? 'API key (Bearer token)' : 'Signing secret';
    $('secret-value').value = data.token || data.secret || '';
    $('copy-status').textContent = '';
    openDialog($('secret-dialog'), $('copy-secret'));
  }
  $('copy-secret').addEventListener('click', async () => {
    const input = $('secret-value');
    let done = false;
    try { await navigator.clipboard.writeText(input.value); done = true; } catch (e) { done = false; }
    if (!done) { input.focus(); input.select(); try { done = document.execCommand('copy'); } catch (e) { done = false; } }
    $('copy-status').textContent = done ? 'Copied to the clipboard.' : 'Copy failed: select the key and copy it by hand.';
  });
  $('secret-done').addEventListener('click', () => { $('secret-value').value = ''; closeDialog($('secret-dialog')); });
  $('secret-dialog').addEventListener('close', () => { $('secret-value').value = ''; });

  // -- create ---------------------------------------------------------------------------
  function policyNote() {
    return cfg.maxDays ? 'Without trusted IPs the key expires within ' + cfg.maxDays + ' days.' : '';
  }
  $('new-key').addEventListener('click', (ev) => {
    lastTrigger = ev.currentTarget;
    const form = $('create-form');
    form.reset(); clearErrors(form);
    $('c-expires-date').hidden = true;
    $('c-owner-wrap').hidden = !!viewerOwner;
    $('c-ips-note').textContent = policyNote();
    const owner = $('owner-filter').value.trim();
    if (owner) $('c-owner').value = owner;
    openDialog($('create-dialog'), viewerOwner || owner ? $('c-name') : $('c-owner'));
  });
  $('c-expiry').addEventListener('change', () => {
    const custom = $('c-expiry').value === 'custom';
    $('c-expires-date').hidden = !custom;
    if (custom) $('c-expires-date').focus();
  });

  $('create-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const form = $('create-form');
    clearErrors(form);
    const body = {
      name: $('c-name').value.trim(),
      scopes: readScopes($('c-scopes'), $('c-scopes-extra')),
      allowed_ips: readIps($('c-ips')),
    };
    if (!viewerOwner) body.owner = $('c-owner').value.trim();
    const expiry = $('c-expiry').value;
    if (expiry === 'custom') {
      const day = $('c-expires-date').value;
      if (!day) { fieldError('c', 'expires_at', 'Pick a date.'); return; }
      body.expires_at = day + 'T23:59:59Z';
    } else if (expiry !== 'never') {
      body.expires_in = expiry;
    }
    const phrase = $('c-passphrase').value;
    if (phrase) body.passphrase = phrase;
    const res = await call('POST', API, body);
    $('c-passphrase').value = '';
    if (res.status === 201) {
      closeDialog($('create-dialog'));
      await load();
      say('Key "' + res.data.key.name + '" created.');
      lastTrigger = $('new-key');
      showSecret(res.data, 'Copy your new key');
    } else if (res.status === 422) {
      fieldError('c', res.data.field, res.data.detail);
    } else if (res.status === 401 || res.status === 403) {
      closeDialog($('create-dialog')); load();
    } else {
      fieldError('c', null, problemText(res));
    }
  });

  // -- edit --------------------------------------------------------------------------------
  let editing = null;
  function openEdit(id) {
    const key = keysById.get(id);
    if (!key) return;
    editing = id;
    const form = $('edit-form');
    clearErrors(form);
    $('edit-title').textContent = 'Edit key ' + key.name;
    $('e-name').value = key.name;
    setScopes($('e-scopes'), $('e-scopes-extra'), key.scopes);
    $('e-ips').value = key.allowed_ips.join('\n');
    openDialog($('edit-dialog'), $('e-name'));
  }
  $('edit-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearErrors($('edit-form'));
    const body = {
      name: $('e-name').value.trim(),
      scopes: readScopes($('e-scopes'), $('e-scopes-extra')),
      allowed_ips: readIps($('e-ips')),
    };
    const res = await call('PATCH', API + '/' + encodeURIComponent(editing), body);
    if (res.ok) {
      closeDialog($('edit-dialog'));
      await load();
      say('Key "' + res.data.name + '" saved.');
    } else if (res.status === 422) {
      fieldError('e', res.data.field, res.data.detail);
    } else {
      fieldError('e', null, problemText(res));
    }
  });

  // -- confirmations: rotate, revoke, delete -------------------------------------------------
  let confirmAction = null;
  function confirmDialog(title, text, okText, withGrace, action) {
    $('confirm-title').textContent = title;
    $('confirm-text').textContent = text;
    $('confirm-ok').textContent = okText;
    $('grace-wrap').hidden = !withGrace;
    clearErrors($('confirm-form'));
    confirmAction = action;
    openDialog($('confirm-dialog'), withGrace ? $('grace') : $('confirm-dialog').querySelector('button.cancel'));
  }
  $('confirm-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const res = await confirmAction();
    if (res.ok) {
      closeDialog($('confirm-dialog'));
    } else {
      const err = $('confirm-error'); err.textContent = problemText(res); err.hidden = false;
    }
  });

  function confirmRotate(id) {
    const key = keysById.get(id);
    confirmDialog('Rotate key ' + key.name + '?', 'A new secret is issued now. Choose how long the old one keeps working, so clients can switch.',
      'Rotate key', true, async () => {
        const grace = $('grace').value;
        const res = await call('POST', API + '/' + encodeURIComponent(id) + '/rotate', {grace: grace === '0' ? 0 : grace});
        if (res.ok) { closeDialog($('confirm-dialog')); await load(); say('Key "' + key.name + '" rotated.'); showSecret(res.data, 'Copy the rotated key'); }
        return res;
      });
  }
  function confirmRevoke(id) {
    const key = keysById.get(id);
    confirmDialog('Revoke key ' + key.name + '?', 'Requests with this key are refused from now on. The key stays listed as revoked.',
      'Revoke key', false, async () => {
        const res = await call('POST', API + '/' + encodeURIComponent(id) + '/revoke');
        if (res.ok) { await load(); say('Key "' + key.name + '" revoked.'); }
        return res;
      });
  }
  function confirmDelete(id) {
    const key = keysById.get(id);
    confirmDialog('Delete key ' + key.name + '?', 'Requests with this key are refused at once. This cannot be undone.',
      'Delete key', false, async () => {
        const res = await call('DELETE', API + '/' + encodeURIComponent(id));
        if (res.ok) { lastTrigger = $('new-key'); await load(); say('Key "' + key.name + '" deleted.'); }
        return res;
      });
  }

  if (!cfg.hostAuth && !sessionStorage.getItem(STORE)) showSignin(''); else load();
})();
"""
