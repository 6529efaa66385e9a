// kubegate Dashboard: standard DOM, fetch and streams, no framework (package
// dashboard's doc says why). The state a reload must keep (agent, namespace, kind,
// object, view) lives in the URL's hash; everything else is rebuilt from the cluster.
import { APIError, Client, ListWatch, fetchSession, lines, logout, paths, query } from './api.js';
import { age, collectionPath, fluxKinds, kinds as builtinKinds, objectPath } from './resources.js';

const $ = (id) => document.getElementById(id);

// h builds an element: attributes (never style or on* handlers: the CSP allows
// neither) and children (strings become text nodes, so nothing is parsed as HTML).
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === false || v === null || v === undefined) continue;
    if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const app = {
  session: null,
  client: null,
  kinds: builtinKinds.slice(),
  nsMode: null, // 'list' or 'text'
  list: null, // the current table's ListWatch
  detail: [], // what the detail view runs (ListWatch, AbortController)
  rows: new Map(), // uid → object of the current table
  lastRefresh: Date.now(),
};

// ---- the URL hash: agent, ns, kind, name, view, container --------------------------

function readHash() {
  const p = new URLSearchParams(location.hash.slice(1));
  return Object.fromEntries(p.entries());
}

function hrefFor(change) {
  const next = { ...readHash(), ...change };
  const p = new URLSearchParams();
  for (const k of ['agent', 'ns', 'kind', 'name', 'view', 'container']) {
    if (next[k]) p.set(k, next[k]);
  }
  return '#' + p.toString();
}

function go(change) {
  const href = hrefFor(change);
  if (href === location.hash || (href === '#' && location.hash === '')) route();
  else location.hash = href;
}

// ---- messages: the aria-live regions ------------------------------------------------

function showError(err, what) {
  const box = $('kg-errors');
  box.replaceChildren();
  if (err instanceof APIError) {
    box.append(
      h('p', {}, h('span', { class: 'source' }, err.source), what ? ` (${what})` : '', ': ', err.message),
      h('p', { class: 'help' }, err.detail),
    );
  } else {
    box.append(h('p', {}, h('span', { class: 'source' }, 'Error'), what ? ` (${what})` : '', ': ', String(err && err.message ? err.message : err)));
  }
  box.append(h('button', { type: 'button', id: 'kg-errors-dismiss' }, 'Dismiss'));
  $('kg-errors-dismiss').addEventListener('click', () => box.replaceChildren());
}

function clearError() {
  $('kg-errors').replaceChildren();
}

function announce(text) {
  $('kg-status').textContent = text;
}

function message(text) {
  const m = $('kg-message');
  m.textContent = text;
  m.hidden = !text;
}

// ---- confirmation: a <dialog>, keyboard-first (Escape cancels) ----------------------

function confirmAction(text, okLabel, input) {
  const dlg = $('kg-confirm');
  $('kg-confirm-text').textContent = text;
  $('kg-confirm-ok').textContent = okLabel;
  $('kg-confirm-input-field').hidden = input === undefined;
  if (input !== undefined) $('kg-confirm-input').value = String(input);
  return new Promise((resolve) => {
    dlg.addEventListener('close', () => {
      if (dlg.returnValue !== 'ok') return resolve(null);
      resolve(input === undefined ? true : $('kg-confirm-input').value);
    }, { once: true });
    dlg.returnValue = '';
    dlg.showModal();
    (input === undefined ? $('kg-confirm-cancel') : $('kg-confirm-input')).focus();
  });
}

// ---- start: session, agents, namespaces, discovery ----------------------------------

function toLogin() {
  const next = location.pathname + location.hash;
  location.assign(paths.login + query({ next }));
}

async function start() {
  let session;
  try {
    session = await fetchSession();
  } catch (e) {
    showError(e, 'reading the session');
    return;
  }
  if (!session) return toLogin();
  app.session = session;
  $('kg-user').textContent = session.user;
  $('kg-who').hidden = false;
  $('kg-logout').addEventListener('click', onLogout);
  // The session's idle timer restarts when the person acts, not while the page
  // only watches: at most one session call a minute, on a click or a key.
  for (const type of ['click', 'keydown']) document.addEventListener(type, refreshSoon, { passive: true });

  const agents = session.agents || [];
  if (agents.length === 0) {
    message(`${session.user} cannot reach any agent's cluster through this gateway. ` +
      "Ask a maintainer of an agent's configuration project to grant you access (user_access in the agent's configuration).");
    return;
  }
  $('kg-pickers').hidden = false;
  const sel = $('kg-agent');
  sel.replaceChildren(...agents.map((a) => h('option', { value: String(a.id) }, `${a.name} (agent ${a.id})`)));
  $('kg-agent-field').hidden = agents.length < 2;
  sel.addEventListener('change', () => go({ agent: sel.value, ns: '', name: '', view: '', container: '' }));
  window.addEventListener('hashchange', route);
  await route();
}

async function refreshSoon() {
  if (Date.now() - app.lastRefresh < 60000) return;
  app.lastRefresh = Date.now();
  try {
    const s = await fetchSession();
    if (!s) return toLogin();
    app.session = s;
    if (app.client) app.client.csrf = s.csrf_token;
  } catch {
    // the next API call shows what is wrong
  }
}

async function onLogout() {
  try {
    await logout(app.session.csrf_token);
  } catch (e) {
    showError(e, 'logging out');
    return;
  }
  location.assign(paths.login);
}

// agentChanged sets up the client, the namespace picker and the kinds for an agent.
async function agentChanged(agentID) {
  stopAll();
  app.client = new Client(agentID, app.session.csrf_token, () => toLogin());
  app.agentID = agentID;
  app.nsMode = null;
  app.kinds = builtinKinds.slice();
  await Promise.all([loadNamespaces(), discoverFlux()]);
  renderKinds();
}

async function loadNamespaces() {
  const listField = $('kg-ns-list-field');
  const textField = $('kg-ns-text-field');
  try {
    const list = await app.client.json('/api/v1/namespaces');
    const names = (list.items || []).map((n) => n.metadata.name).sort();
    const sel = $('kg-ns');
    sel.replaceChildren(h('option', { value: '' }, 'Choose a namespace'), ...names.map((n) => h('option', { value: n }, n)));
    if (!sel.dataset.wired) {
      sel.addEventListener('change', () => go({ ns: sel.value, name: '', view: '', container: '' }));
      sel.dataset.wired = '1';
    }
    app.nsMode = 'list';
    listField.hidden = false;
    textField.hidden = true;
  } catch (e) {
    if (!(e instanceof APIError) || e.status !== 403) {
      showError(e, 'listing namespaces');
    }
    // Not allowed to list namespaces (RBAC or the agent's policy): type one.
    app.nsMode = 'text';
    listField.hidden = true;
    textField.hidden = false;
    if (!textField.dataset.wired) {
      textField.addEventListener('submit', (ev) => {
        ev.preventDefault();
        go({ ns: $('kg-ns-text').value.trim(), name: '', view: '', container: '' });
      });
      textField.dataset.wired = '1';
    }
  }
}

async function discoverFlux() {
  try {
    const groups = await app.client.json('/apis');
    app.kinds = builtinKinds.concat(fluxKinds(groups));
  } catch {
    // Discovery refused: the built-in kinds still work.
  }
}

function renderKinds() {
  const cur = readHash().kind || 'pods';
  $('kg-kinds').replaceChildren(...app.kinds.map((k) => {
    const b = h('button', { type: 'button', 'aria-pressed': String(k.id === cur), dataset: { kind: k.id } }, k.title);
    b.addEventListener('click', () => go({ kind: k.id, name: '', view: '', container: '' }));
    return h('li', {}, b);
  }));
}

// ---- routing ------------------------------------------------------------------------

function stopAll() {
  if (app.list) app.list.stop();
  app.list = null;
  for (const s of app.detail) s.stop ? s.stop() : s.abort();
  app.detail = [];
}

let routing = Promise.resolve();

function route() {
  routing = routing.then(routeNow, routeNow);
  return routing;
}

async function routeNow() {
  const st = readHash();
  const agents = app.session.agents;
  const agent = agents.some((a) => String(a.id) === st.agent) ? st.agent : String(agents[0].id);
  if (agent !== app.agentID) await agentChanged(agent);
  $('kg-agent').value = agent;
  stopAll();
  const ns = st.ns || '';
  if (app.nsMode === 'list') $('kg-ns').value = ns;
  else $('kg-ns-text').value = ns;
  const kind = app.kinds.find((k) => k.id === (st.kind || 'pods')) || app.kinds[0];
  for (const b of document.querySelectorAll('#kg-kinds button')) {
    b.setAttribute('aria-pressed', String(b.dataset.kind === kind.id));
  }
  $('kg-list').hidden = true;
  $('kg-detail').hidden = true;
  if (!ns) {
    message(app.nsMode === 'list' ? 'Choose a namespace.' : 'Type a namespace and press Open.');
    return;
  }
  message('');
  if (st.name) showDetail(kind, ns, st.name, st.view || 'yaml', st.container || '');
  else showList(kind, ns);
}

// ---- tables -------------------------------------------------------------------------

function cell(c) {
  if (c && typeof c === 'object' && 'age' in c) {
    return h('td', { dataset: { age: c.age || '' } }, age(c.age));
  }
  if (c && typeof c === 'object') return h('td', {}, h('span', { class: c.cls }, c.text));
  return h('td', {}, c);
}

function showList(kind, ns) {
  $('kg-list').hidden = false;
  $('kg-list-title').textContent = `${kind.title} in ${ns}`;
  $('kg-table').dataset.kind = kind.id;
  $('kg-table-caption').textContent = `${kind.title} in namespace ${ns}, live (list, then watch)`;
  const cols = ['Name', ...kind.columns];
  if (kind.logs || kind.actions.length) cols.push('Actions');
  $('kg-table-head').replaceChildren(...cols.map((c) => h('th', { scope: 'col' }, c)));
  const body = $('kg-table-body');
  body.replaceChildren();
  app.rows = new Map();
  $('kg-empty').hidden = true;
  body.setAttribute('aria-busy', 'true');

  const render = (obj) => {
    const name = obj.metadata.name;
    const actions = [];
    if (kind.logs) actions.push(h('a', { href: hrefFor({ name, view: 'logs', container: '' }), class: 'logs-link', dataset: { name } }, 'Logs'));
    for (const a of kind.actions) actions.push(actionButton(kind, ns, obj, a));
    const tds = [
      h('th', { scope: 'row' }, h('a', { href: hrefFor({ name, view: '', container: '' }), dataset: { name } }, name)),
      ...kind.cells(obj).map(cell),
    ];
    if (kind.logs || kind.actions.length) tds.push(h('td', { class: 'actions' }, actions));
    return h('tr', { dataset: { uid: obj.metadata.uid, name } }, tds);
  };
  const place = (obj) => {
    const uid = obj.metadata.uid;
    const row = render(obj);
    const old = body.querySelector(`tr[data-uid="${CSS.escape(uid)}"]`);
    app.rows.set(uid, obj);
    if (old) {
      old.replaceWith(row);
      return;
    }
    // Keep the rows sorted by name, as kubectl does.
    const after = [...body.children].find((tr) => tr.dataset.name > obj.metadata.name);
    body.insertBefore(row, after || null);
  };
  const empty = () => { $('kg-empty').hidden = body.children.length > 0; };

  app.list = new ListWatch(app.client, collectionPath(kind, ns), {}, {
    reset(items) {
      body.replaceChildren();
      app.rows = new Map();
      items.sort((a, b) => a.metadata.name.localeCompare(b.metadata.name)).forEach(place);
      body.removeAttribute('aria-busy');
      empty();
    },
    event(type, obj) {
      if (type === 'DELETED') {
        app.rows.delete(obj.metadata.uid);
        const old = body.querySelector(`tr[data-uid="${CSS.escape(obj.metadata.uid)}"]`);
        if (old) old.remove();
      } else if (type === 'ADDED' || type === 'MODIFIED') {
        place(obj);
      }
      empty();
    },
    live() { $('kg-table').dataset.live = 'true'; },
    error(e) { showError(e, `${kind.title.toLowerCase()} in ${ns}`); body.removeAttribute('aria-busy'); },
  }).start();
}

// Ages tick without a request.
setInterval(() => {
  for (const td of document.querySelectorAll('td[data-age]')) td.textContent = age(td.dataset.age);
}, 5000);

// ---- actions ------------------------------------------------------------------------

// kubectl's rollout restart and flux's reconcile use an RFC 3339 time of now.
const now = () => new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');

function actionButton(kind, ns, obj, action) {
  const name = obj.metadata.name;
  const labels = { delete: 'Delete', restart: 'Restart', scale: 'Scale', reconcile: 'Reconcile', suspend: 'Suspend', resume: 'Resume' };
  const suspended = !!(obj.spec && obj.spec.suspend);
  if ((action === 'suspend' && suspended) || (action === 'resume' && !suspended)) return null;
  const b = h('button', {
    type: 'button', class: action === 'delete' ? 'danger' : '',
    dataset: { action, name }, 'aria-label': `${labels[action]} ${kind.kind} ${name}`,
  }, labels[action]);
  b.addEventListener('click', () => runAction(kind, ns, obj, action));
  return b;
}

async function runAction(kind, ns, obj, action) {
  const name = obj.metadata.name;
  const path = objectPath(kind, ns, name);
  const what = `${kind.kind} ${ns}/${name}`;
  try {
    switch (action) {
      case 'delete': {
        if (!(await confirmAction(`Delete ${what}?`, 'Delete'))) return;
        await app.client.delete(path);
        announce(`Deleted ${what}.`);
        break;
      }
      case 'restart': {
        if (!(await confirmAction(`Restart ${what}? Its pods are replaced one by one, as kubectl rollout restart does.`, 'Restart'))) return;
        // kubectl rollout restart: a strategic-merge patch of the pod template's
        // annotation kubectl.kubernetes.io/restartedAt (k8s.io/kubectl
        // pkg/polymorphichelpers/objectrestarter.go).
        await app.client.patch(path, {
          spec: { template: { metadata: { annotations: { 'kubectl.kubernetes.io/restartedAt': now() } } } },
        }, 'application/strategic-merge-patch+json');
        announce(`Restarted ${what}.`);
        break;
      }
      case 'scale': {
        const cur = (obj.spec && obj.spec.replicas) ?? 1;
        const v = await confirmAction(`Scale ${what} to how many replicas?`, 'Scale', cur);
        if (v === null) return;
        const replicas = Number(v);
        if (!Number.isInteger(replicas) || replicas < 0) {
          showError(new Error(`${v} is not a number of replicas (a whole number, 0 or more)`), 'scaling');
          return;
        }
        // The scale subresource, as kubectl scale does.
        await app.client.patch(path + '/scale', { spec: { replicas } }, 'application/merge-patch+json');
        announce(`Scaled ${what} to ${replicas}.`);
        break;
      }
      case 'reconcile':
      case 'resume':
      case 'suspend': {
        if (!(await confirmAction(`${action[0].toUpperCase() + action.slice(1)} ${what}?`, action[0].toUpperCase() + action.slice(1)))) return;
        // Flux: the annotation reconcile.fluxcd.io/requestedAt asks the controller to
        // reconcile now; spec.suspend stops and resumes it (`flux reconcile`,
        // `flux suspend`, `flux resume`; resume also requests a reconcile).
        const patch = {};
        if (action !== 'suspend') patch.metadata = { annotations: { 'reconcile.fluxcd.io/requestedAt': new Date().toISOString() } };
        if (action !== 'reconcile') patch.spec = { suspend: action === 'suspend' };
        await app.client.patch(path, patch, 'application/merge-patch+json');
        announce(`${action === 'reconcile' ? 'Requested a reconcile of' : action === 'suspend' ? 'Suspended' : 'Resumed'} ${what}.`);
        break;
      }
      default:
        return;
    }
    clearError();
  } catch (e) {
    showError(e, `${action} ${what}`);
  }
}

// ---- details: YAML, events, logs ----------------------------------------------------

function showDetail(kind, ns, name, view, container) {
  $('kg-detail').hidden = false;
  $('kg-detail-title').textContent = `${kind.kind} ${ns}/${name}`;
  $('kg-back').href = hrefFor({ name: '', view: '', container: '' });
  const views = ['yaml', 'events'];
  if (kind.logs) views.push('logs');
  if (!views.includes(view)) view = 'yaml';
  const labels = { yaml: 'YAML', events: 'Events', logs: 'Logs' };
  $('kg-views').replaceChildren(...views.map((v) => h('li', {},
    h('a', { href: hrefFor({ view: v }), id: `kg-tab-${v}`, 'aria-current': v === view ? 'page' : false }, labels[v]))));
  for (const v of ['yaml', 'events', 'logs']) $(`kg-view-${v}`).hidden = v !== view;
  const path = objectPath(kind, ns, name);
  if (view === 'yaml') showYAML(path);
  if (view === 'events') showEvents(path, ns);
  if (view === 'logs') showLogs(path, container);
}

async function showYAML(path) {
  const pre = $('kg-yaml');
  pre.textContent = 'Loading…';
  const ctrl = new AbortController();
  app.detail.push(ctrl);
  try {
    // The API server serves YAML itself (Accept: application/yaml).
    pre.textContent = await app.client.text(path, { accept: 'application/yaml', signal: ctrl.signal });
    pre.dataset.loaded = 'true';
  } catch (e) {
    if (ctrl.signal.aborted) return;
    pre.textContent = '';
    showError(e, 'reading the object');
  }
}

async function showEvents(path, ns) {
  const body = $('kg-events-body');
  body.replaceChildren();
  $('kg-events-empty').hidden = true;
  const ctrl = new AbortController();
  app.detail.push(ctrl);
  let obj;
  try {
    obj = await app.client.json(path, { signal: ctrl.signal });
  } catch (e) {
    if (!ctrl.signal.aborted) showError(e, 'reading the object');
    return;
  }
  if (ctrl.signal.aborted) return;
  const rows = new Map();
  const render = (ev) => {
    const last = ev.lastTimestamp || ev.eventTime || ev.metadata.creationTimestamp;
    const from = (ev.source && ev.source.component) || ev.reportingComponent || ev.reportingController || '';
    return h('tr', { dataset: { uid: ev.metadata.uid, reason: ev.reason || '' } },
      h('td', {}, h('span', { class: ev.type === 'Warning' ? 'phase-bad' : '' }, ev.type || '')),
      h('td', {}, ev.reason || ''), h('td', { dataset: { age: last || '' } }, age(last)),
      h('td', {}, String(ev.count || 1)), h('td', {}, from), h('td', {}, ev.message || ''));
  };
  const redraw = () => {
    const sorted = [...rows.values()].sort((a, b) =>
      Date.parse(a.lastTimestamp || a.eventTime || a.metadata.creationTimestamp) -
      Date.parse(b.lastTimestamp || b.eventTime || b.metadata.creationTimestamp));
    body.replaceChildren(...sorted.map(render));
    $('kg-events-empty').hidden = rows.size > 0;
  };
  const lw = new ListWatch(app.client, `/api/v1/namespaces/${encodeURIComponent(ns)}/events`,
    { fieldSelector: `involvedObject.uid=${obj.metadata.uid}` }, {
      reset(items) { rows.clear(); for (const ev of items) rows.set(ev.metadata.uid, ev); redraw(); },
      event(type, ev) {
        if (type === 'DELETED') rows.delete(ev.metadata.uid);
        else rows.set(ev.metadata.uid, ev);
        redraw();
      },
      live() { $('kg-events').dataset.live = 'true'; },
      error(e) { showError(e, 'events'); },
    }).start();
  app.detail.push(lw);
}

async function showLogs(path, container) {
  const pre = $('kg-log');
  const sel = $('kg-log-container');
  const state = $('kg-log-state');
  pre.textContent = '';
  const ctrl = new AbortController();
  app.detail.push(ctrl);
  let pod;
  try {
    pod = await app.client.json(path, { signal: ctrl.signal });
  } catch (e) {
    if (!ctrl.signal.aborted) showError(e, 'reading the pod');
    return;
  }
  if (ctrl.signal.aborted) return;
  const names = [...(pod.spec.initContainers || []), ...(pod.spec.containers || [])].map((c) => c.name);
  if (!names.includes(container)) container = (pod.spec.containers[0] || {}).name || names[0];
  sel.replaceChildren(...names.map((n) => h('option', { value: n }, n)));
  sel.value = container;
  sel.onchange = () => go({ container: sel.value });
  $('kg-log-form').onsubmit = (ev) => { ev.preventDefault(); route(); };
  const tail = Math.max(1, Number($('kg-log-tail').value) || 200);
  state.textContent = 'Connecting…';
  try {
    const resp = await app.client.request('GET', `${path}/log` + query({ follow: 'true', container, tailLines: tail }),
      { accept: '*/*', signal: ctrl.signal }); // the log endpoint answers text/plain but refuses (406) Accept: text/plain alone
    state.textContent = `Streaming ${container} (follow).`;
    pre.dataset.streaming = 'true';
    for await (const line of lines(resp.body)) {
      // Auto-scroll only when the reader is at the bottom already.
      const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
      pre.append(line + '\n');
      // Keep the page light on long streams: the newest ~20000 lines.
      if (pre.childNodes.length > 20000) pre.firstChild.remove();
      if (atBottom) pre.scrollTop = pre.scrollHeight;
    }
    state.textContent = 'The log stream ended (the container stopped or the connection closed). Restart the stream to read on.';
  } catch (e) {
    if (ctrl.signal.aborted) return;
    state.textContent = 'The log stream failed.';
    showError(e, `logs of ${container}`);
  } finally {
    pre.dataset.streaming = 'false';
  }
}

start();
