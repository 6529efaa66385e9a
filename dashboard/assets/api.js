// The Dashboard's only way out: the gateway's own origin. The session endpoint
// (contract.SessionPath) and the Kubernetes API under /k8s-proxy/ (contract.PathPrefix),
// called with the session cookie (credentials: 'same-origin'), the agent id and the
// session's CSRF token (access.md §2, credential form 3). Every call that reaches a
// cluster passes kubegate's ext_authz and ext_proc like kubectl's.

export const paths = Object.freeze({
  session: '/ui/session', // contract.SessionPath
  login: '/ui/login', // contract.LoginPath
  logout: '/ui/logout', // contract.LogoutPath
  api: '/k8s-proxy', // contract.PathPrefix without its trailing slash
});

// contract.HeaderError: set on every answer that is kubegate's own, not the cluster's.
const gatewayErrorHeader = 'x-kubegate-error';

// APIError is a refused request: the Status message, and whose answer it was.
export class APIError extends Error {
  constructor(status, message, { reason = '', gateway = null } = {}) {
    super(message);
    this.status = status;
    this.reason = reason;
    this.gateway = gateway; // the x-kubegate-error reason, or null for the cluster's answer
  }

  // source says who refused, for the person reading it.
  get source() {
    if (this.status === 0) return 'The gateway could not be reached';
    return this.gateway !== null ? 'kubegate (the gateway) refused this' : 'The cluster refused this';
  }

  get detail() {
    const code = this.status ? `HTTP ${this.status}${this.reason ? ' ' + this.reason : ''}` : '';
    const gw = this.gateway ? ` [${this.gateway}]` : '';
    return `${code}${gw}: ${this.message}`;
  }
}

// errorFrom reads a refused answer: a Kubernetes Status body (the API server's and
// kubegate's own, contract.StatusBody), or the first part of whatever else it is.
export async function errorFrom(resp) {
  const gateway = resp.headers.get(gatewayErrorHeader);
  let text = '';
  try {
    text = await resp.text();
  } catch {
    // the body could not be read; the status line is all there is
  }
  let message = '';
  let reason = '';
  try {
    const st = JSON.parse(text);
    if (st && st.kind === 'Status') {
      message = st.message || '';
      reason = st.reason || '';
    }
  } catch {
    // not JSON: keep the text
  }
  if (!message) message = text.trim().slice(0, 500) || resp.statusText || 'no message';
  return new APIError(resp.status, message, { reason, gateway });
}

// fetchSession asks the browser listener who is logged in (contract.SessionInfo). A
// 401 means no session: null. The call also refreshes the session's idle timer.
export async function fetchSession(signal) {
  let resp;
  try {
    resp = await fetch(paths.session, {
      credentials: 'same-origin', cache: 'no-store', headers: { Accept: 'application/json' }, signal,
    });
  } catch (e) {
    throw new APIError(0, String(e && e.message ? e.message : e));
  }
  if (resp.status === 401) return null;
  if (!resp.ok) throw await errorFrom(resp);
  return resp.json();
}

// logout ends the session (POST with the CSRF token, contract.LogoutPath).
export async function logout(csrf) {
  const resp = await fetch(paths.logout, {
    method: 'POST', credentials: 'same-origin',
    headers: { 'X-Csrf-Token': csrf, Accept: 'application/json' },
  });
  if (!resp.ok && resp.status !== 303) throw await errorFrom(resp);
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? '?' + s : '';
}

// Client calls one agent's cluster through the gateway.
export class Client {
  constructor(agentID, csrf, onUnauthorized) {
    this.agentID = String(agentID);
    this.csrf = csrf;
    this.onUnauthorized = onUnauthorized;
  }

  // request sends one call and returns the Response; a refusal throws an APIError.
  async request(method, path, { body, contentType, accept = 'application/json', signal } = {}) {
    const headers = { 'Gitlab-Agent-Id': this.agentID, 'X-Csrf-Token': this.csrf, Accept: accept };
    if (contentType) headers['Content-Type'] = contentType;
    let resp;
    try {
      resp = await fetch(paths.api + path, {
        method, headers, body, signal, credentials: 'same-origin', cache: 'no-store', redirect: 'error',
      });
    } catch (e) {
      if (signal && signal.aborted) throw e;
      throw new APIError(0, String(e && e.message ? e.message : e));
    }
    if (!resp.ok) {
      const err = await errorFrom(resp);
      // A 401 from kubegate itself: the session ended (expired, logged out elsewhere).
      if (err.status === 401 && err.gateway !== null && this.onUnauthorized) this.onUnauthorized(err);
      throw err;
    }
    return resp;
  }

  async json(path, opts) {
    return (await this.request('GET', path, opts)).json();
  }

  async text(path, opts) {
    return (await this.request('GET', path, opts)).text();
  }

  async patch(path, patch, contentType) {
    return (await this.request('PATCH', path, { body: JSON.stringify(patch), contentType })).json();
  }

  async delete(path) {
    return (await this.request('DELETE', path)).json();
  }
}

// lines yields the lines of a streamed body as they arrive (watch events are one JSON
// object per line; logs are text).
export async function* lines(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (line.trim() !== '') yield line;
      }
    }
    if (buf.trim() !== '') yield buf;
  } finally {
    reader.cancel().catch(() => {});
  }
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
  });
}

// ListWatch keeps a collection live the way client-go's reflector does: list, then
// watch from the list's resourceVersion with bookmarks, re-watch from the last seen
// version when the server ends a watch, and re-list when the version is too old
// (410 Gone, as an ERROR event or as the answer). Kubernetes API concepts, "Efficient
// detection of changes" (kubernetes.io/docs/reference/using-api/api-concepts/).
export class ListWatch {
  constructor(client, path, params, handlers) {
    this.client = client;
    this.path = path;
    this.params = params || {};
    this.handlers = handlers; // reset(items), event(type, object), error(APIError), live()
    this.ctrl = new AbortController();
  }

  start() {
    this.run();
    return this;
  }

  stop() {
    this.ctrl.abort();
  }

  async run() {
    const signal = this.ctrl.signal;
    let backoff = 1000;
    while (!signal.aborted) {
      try {
        const list = await this.client.json(this.path + query(this.params), { signal });
        if (signal.aborted) return;
        this.handlers.reset(list.items || []);
        let rv = list.metadata.resourceVersion;
        for (;;) {
          const resp = await this.client.request('GET', this.path + query({
            ...this.params, watch: '1', resourceVersion: rv, allowWatchBookmarks: 'true',
          }), { signal });
          if (this.handlers.live) this.handlers.live();
          let gone = false;
          for await (const line of lines(resp.body)) {
            const ev = JSON.parse(line);
            if (ev.type === 'ERROR') {
              const st = ev.object || {};
              if (st.code === 410) { gone = true; break; }
              throw new APIError(st.code || 500, st.message || 'watch error', { reason: st.reason || '' });
            }
            if (ev.object && ev.object.metadata && ev.object.metadata.resourceVersion) {
              rv = ev.object.metadata.resourceVersion;
            }
            if (ev.type !== 'BOOKMARK') this.handlers.event(ev.type, ev.object);
          }
          if (gone || signal.aborted) break; // re-list
          // The server ended the watch (its timeout): watch again from rv.
        }
        backoff = 1000;
      } catch (e) {
        if (signal.aborted) return;
        if (e instanceof APIError && e.status === 410) continue; // re-list at once
        this.handlers.error(e);
        // A refusal does not change by retrying; the person sees it and picks again.
        if (e instanceof APIError && [400, 401, 403, 404].includes(e.status)) return;
        await sleep(backoff, signal);
        backoff = Math.min(backoff * 2, 30000);
      }
    }
  }
}
