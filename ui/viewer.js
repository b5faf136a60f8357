// Live event viewer. It uses only the public API: the newest page of
// /api/v1/events, then the Server-Sent Events watch from the next offset,
// /api/v1/events?offset= pages (Link rel="next") for older events,
// /api/v1/range and /readyz for the status line.
//
// The watch is read with fetch, not EventSource: the API names each SSE
// event by its CloudEvent type, and an EventSource only delivers event names
// it has a listener for, so events of a type unknown in advance would be
// lost. Reading the stream itself, the page does what EventSource does
// (Last-Event-ID on reconnect, the server's retry: hint) and also sees the
// HTTP status of a refused watch (401, 410, 503) and the position-only ids
// that a filtered watch sends.
'use strict';

(() => {
  const MAX_ROWS = 2000;       // rows kept in the page, newest first
  const PAGE = 100;            // events of the first page and of each "Older"
  const FLUSH_MS = 16;         // arriving events are drawn in batches, at most one a frame
  const STATUS_MS = 10000;     // /readyz refresh
  const SPARK_MINUTES = 15;
  const MAX_RETRY_MS = 30000;

  const $ = (id) => document.getElementById(id);
  const tbody = $('rows');
  const stateEl = $('state');
  const pauseBtn = $('pause');
  const olderBtn = $('older');

  // Filters: type and eventclass are the API's (server-side, in the URL);
  // q is the free text (client-side, in the URL too, for sharing).
  const params = new URLSearchParams(location.search);
  const splitList = (s) => s.split(/[\s,]+/).filter(Boolean);
  const types = params.getAll('type').flatMap(splitList);
  const classes = params.getAll('eventclass').flatMap(splitList);
  let text = (params.get('q') || '').trim().toLowerCase();

  function apiURL(path, extra) {
    const q = new URLSearchParams();
    for (const t of types) q.append('type', t);
    for (const c of classes) q.append('eventclass', c);
    for (const [k, v] of Object.entries(extra || {})) q.set(k, String(v));
    const s = q.toString();
    return path + (s ? '?' + s : '');
  }

  // Same-origin requests carry the session cookie of the login page, when
  // the server has tokens: no token ever appears in a URL.
  function toLogin() {
    location.assign('/ui/login?next=' + encodeURIComponent(location.pathname + location.search));
  }

  class Unauthorized extends Error {}

  async function api(url, init) {
    const resp = await fetch(url, Object.assign({ cache: 'no-store', headers: { Accept: 'application/json' } }, init));
    if (resp.status === 401) {
      toLogin();
      throw new Unauthorized('401');
    }
    return resp;
  }

  async function problemOf(resp) {
    try {
      return await resp.json();
    } catch {
      return { status: resp.status, detail: resp.statusText || 'HTTP ' + resp.status };
    }
  }

  // ---- rows ----

  const rows = [];               // {key, ce, el, hay}, newest first
  const rowOf = new WeakMap();   // tr -> row
  const seenTypes = new Set();
  let olderCursor = null;        // lowest offset the page has read down to

  const timeFmt = new Intl.DateTimeFormat(undefined, {
    month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit',
  });

  const ENTITIES = [
    ['Vm', 'VM'], ['Host', 'Host'], ['Ds', 'Datastore'], ['Net', 'Network'], ['Dvs', 'Switch'],
    ['ComputeResource', 'Cluster'], ['Datacenter', 'Datacenter'],
  ];

  // Kinds of managed objects, as people call them.
  const KINDS = {
    VirtualMachine: 'VM', HostSystem: 'Host', Datastore: 'Datastore', Network: 'Network',
    DistributedVirtualPortgroup: 'Network', VmwareDistributedVirtualSwitch: 'Switch',
    ClusterComputeResource: 'Cluster', ComputeResource: 'Compute', Datacenter: 'Datacenter',
    ResourcePool: 'Pool', Folder: 'Folder',
  };
  const kindOf = (type) => KINDS[type] || type || '';

  // entityOf is the most specific inventory object the event concerns.
  function entityOf(d) {
    for (const [field, kind] of ENTITIES) {
      const e = d[field];
      if (e && e.Name) {
        if (field === 'ComputeResource' && e.ComputeResource && e.ComputeResource.Type !== 'ClusterComputeResource') {
          return { kind: 'Compute', name: e.Name };
        }
        return { kind, name: e.Name };
      }
    }
    if (d.ObjectName) return { kind: kindOf(d.ObjectType), name: d.ObjectName };
    if (d.ManagedObject && d.ManagedObject.Value) return { kind: kindOf(d.ManagedObject.Type), name: d.ManagedObject.Value };
    if (d.ObjectId) return { kind: kindOf(d.ObjectType), name: d.ObjectId };
    return null;
  }

  function shortType(type) {
    return String(type || '').replace(/^vmware\.vsphere\./, '').replace(/\.v0$/, '');
  }

  function cell(tr, cls, content) {
    const td = document.createElement('td');
    td.className = cls;
    if (content instanceof Node) td.appendChild(content);
    else td.textContent = content == null ? '' : String(content);
    tr.appendChild(td);
    return td;
  }

  function makeRow(ce) {
    const d = ce.data || {};
    const key = Number(ce.id);
    const tr = document.createElement('tr');
    tr.dataset.key = ce.id;

    const time = document.createElement('time');
    time.dateTime = ce.time || '';
    const t = new Date(ce.time);
    time.textContent = isNaN(t) ? '' : timeFmt.format(t);
    time.title = isNaN(t) ? '' : t.toISOString().replace('.000Z', 'Z') + ' (UTC)';
    cell(tr, 'c-time', time);

    const open = document.createElement('button');
    open.type = 'button';
    open.textContent = ce.id;
    open.setAttribute('aria-label', 'Show event ' + ce.id);
    cell(tr, 'c-key', open);

    const short = shortType(ce.type);
    cell(tr, 'c-type', short).title = ce.type || '';
    cell(tr, 'c-class', ce.eventclass || '');

    const ent = entityOf(d);
    const entTd = cell(tr, 'c-entity', '');
    if (ent) {
      if (ent.kind) {
        const k = document.createElement('span');
        k.className = 'kind';
        k.textContent = ent.kind;
        entTd.appendChild(k);
      }
      entTd.appendChild(document.createTextNode(ent.name));
    }
    cell(tr, 'c-user', d.UserName || '');
    const msg = d.FullFormattedMessage || d.Message || '';
    const msgTd = cell(tr, 'c-msg', msg);
    if (!ce.data && ce.datadropped) {
      const s = document.createElement('span');
      s.className = 'dropped';
      s.textContent = '(data dropped: ' + ce.datadropped + ')';
      msgTd.appendChild(s);
    }
    if (!seenTypes.has(short) && seenTypes.size < 500) {
      seenTypes.add(short);
      const o = document.createElement('option');
      o.value = short;
      $('types').appendChild(o);
    }
    const row = { key, ce, el: tr, hay: [ent ? ent.name : '', d.UserName || '', msg].join('\n').toLowerCase() };
    tr.hidden = !matches(row);
    rowOf.set(tr, row);
    return row;
  }

  const matches = (row) => !text || row.hay.includes(text);

  // addNewest puts events (oldest first) at the top, and drops the oldest
  // rows beyond MAX_ROWS.
  function addNewest(list, fresh) {
    if (list.length === 0) return;
    if (list.length > MAX_ROWS) list = list.slice(list.length - MAX_ROWS);
    const frag = document.createDocumentFragment();
    const made = new Array(list.length);
    for (let i = list.length - 1, j = 0; i >= 0; i--, j++) {
      const row = makeRow(list[i]);
      if (fresh && list.length < 50) row.el.classList.add('fresh');
      frag.appendChild(row.el);
      made[j] = row;
    }
    tbody.insertBefore(frag, tbody.firstChild);
    rows.unshift(...made);
    if (rows.length > MAX_ROWS) {
      for (const row of rows.splice(MAX_ROWS)) row.el.remove();
      olderCursor = rows[rows.length - 1].key;
    }
    rowsChanged();
  }

  // addOldest puts older events (oldest first) at the bottom, within the cap.
  function addOldest(list) {
    const room = MAX_ROWS - rows.length;
    if (list.length > room) list = list.slice(list.length - room);
    const frag = document.createDocumentFragment();
    for (let i = list.length - 1; i >= 0; i--) {
      const row = makeRow(list[i]);
      frag.appendChild(row.el);
      rows.push(row);
    }
    tbody.appendChild(frag);
    rowsChanged();
    return list;
  }

  function rowsChanged() {
    let visible = 0;
    if (text) {
      for (const r of rows) if (!r.el.hidden) visible++;
    } else {
      visible = rows.length;
    }
    const empty = $('empty');
    empty.hidden = visible > 0;
    if (visible === 0) {
      empty.textContent = rows.length ? 'No event matches the search.' :
        (types.length || classes.length ? 'No event matches the filter yet.' : 'No events yet.');
    }
    $('count').textContent = (text ? visible + ' shown of ' : '') + rows.length.toLocaleString() +
      ' rows (at most ' + MAX_ROWS.toLocaleString() + ')';
    olderBtn.disabled = rows.length >= MAX_ROWS;
    olderBtn.title = olderBtn.disabled ? 'The page keeps at most ' + MAX_ROWS.toLocaleString() + ' rows' : '';
  }

  // ---- arriving events: batched drawing, pause ----

  let pending = [];
  let flushTimer = 0;
  let rangeTimer = 0;
  let paused = false;
  let held = [];
  let heldCount = 0;

  function receive(ce) {
    countRate(ce);
    const key = Number(ce.id);
    if (!range || key > range.latest) {
      // An empty journal's first event is its earliest.
      range = range ? { earliest: range.earliest, latest: key } : { earliest: key, latest: key };
      if (!rangeTimer) rangeTimer = setTimeout(() => { rangeTimer = 0; drawRange(); }, 250);
    }
    if (paused) {
      held.push(ce);
      heldCount++;
      // Only the newest MAX_ROWS can be shown on resume anyway.
      if (held.length > 2 * MAX_ROWS) held = held.slice(held.length - MAX_ROWS);
      showPaused();
      return;
    }
    pending.push(ce);
    if (!flushTimer) flushTimer = setTimeout(flush, FLUSH_MS);
  }

  function flush() {
    flushTimer = 0;
    const batch = pending;
    pending = [];
    addNewest(batch, true);
  }

  function showPaused() {
    pauseBtn.textContent = 'Resume (' + heldCount.toLocaleString() + ' new)';
    setState('paused', 'paused · ' + heldCount.toLocaleString() + ' new');
  }

  function togglePause() {
    paused = !paused;
    pauseBtn.setAttribute('aria-pressed', String(paused));
    if (paused) {
      if (flushTimer) {
        clearTimeout(flushTimer);
        flush();
      }
      showPaused();
      return;
    }
    pauseBtn.textContent = 'Pause';
    const list = held;
    held = [];
    heldCount = 0;
    addNewest(list, true);
    setState(watchState, watchText);
  }

  // ---- events per minute (by event time), drawn as a sparkline ----

  const perSecond = new Map(); // second number -> events

  function countRate(ce) {
    const now = Date.now();
    const t = Date.parse(ce.time);
    // A clock ahead of the browser's counts as now.
    const sec = Math.floor((isNaN(t) ? now : Math.min(t, now)) / 1000);
    if (sec > Math.floor(now / 1000) - SPARK_MINUTES * 60) perSecond.set(sec, (perSecond.get(sec) || 0) + 1);
    if (!sparkTimer) sparkTimer = setTimeout(drawSpark, 1000);
  }

  let sparkTimer = 0;

  function drawSpark() {
    sparkTimer = 0;
    const nowSec = Math.floor(Date.now() / 1000);
    const nowMin = Math.floor(nowSec / 60);
    const counts = new Array(SPARK_MINUTES).fill(0);
    let lastMinute = 0; // the 60 seconds up to now
    for (const [sec, n] of perSecond) {
      const i = SPARK_MINUTES - 1 - (nowMin - Math.floor(sec / 60));
      if (i < 0) {
        perSecond.delete(sec);
        continue;
      }
      counts[i] += n;
      if (sec > nowSec - 60) lastMinute += n;
    }
    const max = Math.max(1, ...counts);
    const svg = $('spark');
    const ns = 'http://www.w3.org/2000/svg';
    svg.replaceChildren();
    const w = 90 / SPARK_MINUTES;
    counts.forEach((c, i) => {
      const h = c ? Math.max(1.5, (c / max) * 19) : 1;
      const r = document.createElementNS(ns, 'rect');
      r.setAttribute('x', (i * w + 0.5).toFixed(2));
      r.setAttribute('y', (20 - h).toFixed(2));
      r.setAttribute('width', (w - 1).toFixed(2));
      r.setAttribute('height', h.toFixed(2));
      if (!c) r.setAttribute('class', 'base');
      svg.appendChild(r);
    });
    $('rate').textContent = lastMinute.toLocaleString() + '/min';
    svg.setAttribute('aria-label', 'events per minute, last ' + SPARK_MINUTES + ' minutes: ' + counts.join(', '));
  }

  // ---- status line ----

  let watchState = 'connecting';
  let watchText = 'connecting…';

  function setState(state, label) {
    if (state !== 'paused') {
      watchState = state;
      watchText = label;
    }
    if (paused && state !== 'paused' && state !== 'behind' && state !== 'stopped') {
      state = 'paused';
      label = 'paused · ' + heldCount.toLocaleString() + ' new (' + watchText + ')';
    }
    stateEl.dataset.state = state;
    stateEl.textContent = label;
  }

  let range = null; // the journal's, as /readyz last said, moved on by arriving events
  let tokens = false; // the API needs a bearer token, as /readyz last said

  function showRange(r) {
    range = r ? { earliest: r.earliest, latest: r.latest } : null;
    drawRange();
  }

  function drawRange() {
    $('range').textContent = range ? 'journal #' + range.earliest + '–#' + range.latest : 'journal empty';
  }

  let statusTimer = 0;
  let statusBusy = false;

  // refreshStatus reads /readyz now and every STATUS_MS (one chain of
  // timers, however often a reconnect asks for a refresh).
  async function refreshStatus() {
    if (statusBusy) return;
    statusBusy = true;
    clearTimeout(statusTimer);
    try {
      const resp = await api('/readyz');
      const body = await resp.json();
      const v = $('vcenter');
      v.dataset.connected = String(!!body.vcenterConnected);
      v.textContent = body.vcenterConnected ? 'vCenter connected' :
        (body.ready ? 'vCenter disconnected (serving cached events)' : 'waiting for vCenter');
      if (body.lastEventTime) v.title = 'last event ' + body.lastEventTime;
      showRange(body.range);
      if (tokens !== !!body.tokens) {
        tokens = !!body.tokens;
        if (dialog.open) showCurl();
      }
    } catch (e) {
      if (e instanceof Unauthorized) return;
      const v = $('vcenter');
      v.dataset.connected = 'false';
      v.textContent = 'server unreachable';
    } finally {
      statusBusy = false;
    }
    statusTimer = setTimeout(refreshStatus, STATUS_MS);
  }

  function banner(message, action, onAction) {
    $('banner').hidden = !message;
    $('banner-text').textContent = message || '';
    const b = $('banner-action');
    b.hidden = !action;
    b.textContent = action || '';
    b.onclick = onAction || null;
  }

  // ---- the watch ----

  let lastId = null;   // the last SSE id seen: where a reconnect resumes
  let fromOffset = null; // the offset of a watch that has no lastId yet
  // emptyStart: the journal was empty when the page started, and the watch
  // (opened with no offset) has dispatched nothing yet. The server starts
  // such a watch from its first event if the journal is still empty when
  // the watch arrives, but after its latest event otherwise: events
  // appended in between would be lost. Only in that second case does the
  // server begin the stream with a position (an id with no data), so a
  // first dispatch that is a position means "start again": read the newest
  // page, then resume after it. (A filtered watch that began on the empty
  // journal may also first send a position, for events that did not match:
  // starting again then reads nothing new, and loses nothing either.)
  // The server refuses an offset below its earliest event, even one that
  // no event ever had, with 410 (and it ends a watch from offset 0 with
  // "fell behind" when the first key is above 0), so asking for offset 0
  // would not do.
  let emptyStart = false;
  let retryMs = 3000;  // the server's retry: hint

  // watch keeps the SSE watch open. Its modes: live (reading), reconnecting
  // (waiting to retry after the stream ended or the server was
  // unreachable), behind (the server purged events the page had not read
  // yet: stop and offer to continue from earliest), stopped (401 or a bad
  // filter). The next mode is decided in one place, after each attempt.
  async function watch() {
    let failures = 0;
    for (;;) {
      let outcome; // {mode, message?, wait?, problem?}
      try {
        const headers = { Accept: 'text/event-stream' };
        const extra = { watch: 'true' };
        if (lastId !== null) headers['Last-Event-ID'] = lastId;
        else if (fromOffset !== null) extra.offset = fromOffset;
        const resp = await fetch(apiURL('/api/v1/events', extra), { headers, cache: 'no-store' });
        if (resp.ok) {
          failures = 0;
          setState('live', 'live');
          outcome = await readStream(resp.body);
        } else {
          const p = await problemOf(resp);
          const after = Number(resp.headers.get('Retry-After'));
          outcome = { status: resp.status, problem: p, wait: after > 0 ? after * 1000 : 0 };
        }
      } catch {
        outcome = { status: 0, problem: { detail: 'server unreachable' } };
      }
      // Decide the next mode.
      if (outcome.restart) {
        start();
        return;
      } else if (outcome.status === 200) {
        failures = 0; // a clean end (server shutting down): come back soon
      } else if (outcome.status === 401) {
        toLogin();
        setState('stopped', 'signed out');
        return;
      } else if (outcome.status === 410 || outcome.behind) {
        fellBehind(outcome.problem);
        return;
      } else if (outcome.status === 400) {
        setState('stopped', 'stopped');
        banner('The server refused the watch: ' + outcome.problem.detail);
        return;
      } else {
        failures++;
      }
      const wait = outcome.wait || Math.min(retryMs * Math.max(1, 2 ** (failures - 1)), MAX_RETRY_MS);
      setState('reconnecting', 'reconnecting in ' + Math.round(wait / 1000) + ' s' +
        (outcome.problem && outcome.status !== 200 ? ' (' + outcome.problem.detail + ')' : '') + '…');
      refreshStatus();
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
  }

  // readStream reads Server-Sent Events as EventSource would, until the
  // stream ends; its result is the watch's outcome.
  async function readStream(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    let event = '';
    let data = [];
    let id = null;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return { status: 200, problem: { detail: 'the stream ended' } };
        buf += value;
        // Lines are cut from buf by index, and what is left kept once per
        // chunk: slicing buf per line would copy a large chunk per line.
        let start = 0;
        let nl;
        while ((nl = buf.indexOf('\n', start)) >= 0) {
          let line = buf.slice(start, nl);
          start = nl + 1;
          if (line.endsWith('\r')) line = line.slice(0, -1);
          if (line === '') {
            if (emptyStart && (id !== null || data.length)) {
              emptyStart = false;
              if (!data.length) {
                // The journal held events when the watch began: see
                // emptyStart.
                reader.cancel().catch(() => {});
                return { restart: true };
              }
            }
            // Dispatch: the id counts even without data (a filtered
            // watch's position), as EventSource's last event id does.
            if (id !== null) lastId = id;
            if (data.length) {
              const payload = data.join('\n');
              if (event === 'error') {
                let err = {};
                try { err = JSON.parse(payload).error || {}; } catch { /* keep {} */ }
                return { status: err.status || 410, behind: true, problem: err };
              }
              try {
                receive(JSON.parse(payload));
              } catch (e) {
                console.warn('undecodable event', id, e);
              }
            }
            event = '';
            data = [];
            continue;
          }
          if (line.startsWith(':')) continue; // heartbeat
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          let val = colon < 0 ? '' : line.slice(colon + 1);
          if (val.startsWith(' ')) val = val.slice(1);
          if (field === 'data') data.push(val);
          else if (field === 'event') event = val;
          else if (field === 'id' && !val.includes('\0')) id = val;
          else if (field === 'retry' && /^\d+$/.test(val)) retryMs = Number(val);
        }
        buf = buf.slice(start);
      }
    } catch {
      return { status: 0, problem: { detail: 'connection lost' } };
    }
  }

  // fellBehind stops the watch: events after the last one read were purged
  // before the page got them. It says which, and offers to go on from the
  // earliest event still held.
  function fellBehind(p) {
    const after = lastId !== null ? Number(lastId) : null;
    const earliest = p && p.earliest != null ? Number(p.earliest) : null;
    let missed = 'Some events were purged before this page could read them';
    if (after !== null && earliest !== null) {
      missed = earliest - 1 > after ?
        'Events #' + (after + 1) + '–#' + (earliest - 1) + ' were purged before this page could read them' :
        'Events after #' + after + ' were purged before this page could read them';
    }
    setState('behind', 'fell behind');
    const detail = p && p.detail ? ' (' + p.detail + ').' : '.';
    if (earliest === null) {
      banner(missed + detail + ' Reload to start again.', 'Reload', () => location.reload());
      return;
    }
    banner(missed + detail + ' The journal now holds #' + earliest + (p.latest != null ? '–#' + p.latest : '') + '.',
      'Continue from #' + earliest, () => {
        // What was missed stays said, above the rows that follow the gap.
        banner(missed + '; the page went on from #' + earliest + '.');
        lastId = null;
        fromOffset = earliest;
        setState('connecting', 'connecting…');
        watch();
      });
  }

  // ---- older events ----

  function nextLink(header) {
    const m = /<([^>]*)>\s*;\s*rel="?next"?/.exec(header || '');
    return m ? m[1] : null;
  }

  function olderNote(s) {
    $('older-note').textContent = s;
  }

  async function loadOlder() {
    if (olderCursor === null || olderCursor <= 0) {
      olderNote('No older events.');
      return;
    }
    olderBtn.disabled = true;
    const was = olderCursor;
    try {
      let from = Math.max(0, olderCursor - PAGE);
      let resp = await api(apiURL('/api/v1/events', { offset: from, limit: PAGE }));
      if (resp.status === 410) {
        // The page asked below earliest: read from earliest if anything
        // is held below what the page shows; otherwise it is all purged.
        const p = await problemOf(resp);
        if (p.earliest == null || p.earliest >= olderCursor) {
          olderNote('Older events were purged: the journal now begins at #' + (p.earliest ?? '?') +
            ', and nothing before it is held any more.');
          return;
        }
        from = Number(p.earliest);
        resp = await api(apiURL('/api/v1/events', { offset: from, limit: PAGE }));
        if (resp.status === 410) {
          const p2 = await problemOf(resp);
          olderNote('Older events were purged meanwhile: the journal now begins at #' + p2.earliest + '.');
          return;
        }
      }
      const got = [];
      for (;;) {
        if (resp.status === 204) break;
        if (!resp.ok) {
          olderNote('Could not load older events: ' + (await problemOf(resp)).detail);
          return;
        }
        let reached = false;
        for (const ce of await resp.json()) {
          if (Number(ce.id) >= olderCursor) {
            reached = true;
            break;
          }
          got.push(ce);
        }
        const next = reached ? null : nextLink(resp.headers.get('Link'));
        if (!next) break;
        resp = await api(next);
      }
      const added = addOldest(got);
      if (olderCursor !== was || (got.length && !added.length)) {
        // Live events filled the page while this request was out (and
        // may have dropped its oldest rows, moving olderCursor up to the
        // oldest kept): nothing older fits any more, and the cursor stays
        // at the oldest row shown.
        olderNote('The page is full (' + MAX_ROWS.toLocaleString() + ' rows): no room for older events.');
        return;
      }
      olderCursor = added.length < got.length ? Number(added[0].id) : from;
      olderNote(added.length ? 'Loaded ' + added.length + ' older events.' :
        'No matching events between #' + from + ' and #' + (was - 1) + '.');
    } catch (e) {
      if (!(e instanceof Unauthorized)) olderNote('Could not load older events: server unreachable.');
    } finally {
      rowsChanged();
    }
  }

  // ---- detail ----

  const dialog = $('detail');
  let detailKey = null;

  // showCurl shows the curl line of the event in the detail. With tokens
  // on, the page's session cookie is no use to curl: the line says where
  // a token goes, as a shell variable the person sets (the page never
  // knows a token: the login form's cookie is HttpOnly).
  function showCurl() {
    const auth = tokens ? '-H "Authorization: Bearer $TOKEN" ' : '';
    $('d-curl').textContent = 'curl -s ' + auth + "'" + location.origin + '/api/v1/events/' + detailKey + "'";
  }

  function openDetail(row) {
    $('d-title').textContent = 'Event #' + row.key + ' · ' + shortType(row.ce.type);
    $('d-json').textContent = JSON.stringify(row.ce, null, 2);
    detailKey = row.key;
    showCurl();
    $('d-copied').textContent = '';
    dialog.showModal();
    $('d-close').focus();
  }

  async function copy(textToCopy, what) {
    let ok = false;
    try {
      await navigator.clipboard.writeText(textToCopy);
      ok = true;
    } catch {
      // Plain http to another host is no secure context: no clipboard API.
      const ta = document.createElement('textarea');
      ta.value = textToCopy;
      dialog.appendChild(ta);
      ta.select();
      try { ok = document.execCommand('copy'); } catch { ok = false; }
      ta.remove();
    }
    $('d-copied').textContent = ok ? what + ' copied.' : 'Copy failed: select the text and copy it.';
  }

  // ---- wiring ----

  function init() {
    $('f-type').value = types.join(', ');
    $('f-class').value = classes[0] || '';
    $('f-text').value = params.get('q') || '';

    $('filters').addEventListener('submit', (e) => {
      e.preventDefault();
      const q = new URLSearchParams();
      for (const t of splitList($('f-type').value)) q.append('type', t);
      if ($('f-class').value) q.append('eventclass', $('f-class').value);
      const s = $('f-text').value.trim();
      if (s) q.set('q', s);
      const qs = q.toString();
      location.assign('/' + (qs ? '?' + qs : ''));
    });
    $('f-text').addEventListener('input', () => {
      text = $('f-text').value.trim().toLowerCase();
      for (const r of rows) r.el.hidden = !matches(r);
      rowsChanged();
      const u = new URL(location.href);
      if (text) u.searchParams.set('q', $('f-text').value.trim());
      else u.searchParams.delete('q');
      history.replaceState(null, '', u);
    });
    pauseBtn.addEventListener('click', togglePause);
    olderBtn.addEventListener('click', loadOlder);
    tbody.addEventListener('click', (e) => {
      const tr = e.target.closest('tr');
      const row = tr && rowOf.get(tr);
      if (row && !window.getSelection().toString()) openDetail(row);
    });
    $('d-close').addEventListener('click', () => dialog.close());
    dialog.addEventListener('click', (e) => { if (e.target === dialog) dialog.close(); });
    $('d-copy').addEventListener('click', () => copy($('d-json').textContent, 'JSON'));
    $('d-copy-curl').addEventListener('click', () => copy($('d-curl').textContent, 'curl line'));
    document.addEventListener('keydown', (e) => {
      if (e.target.closest('input, select, textarea, dialog')) return;
      if (e.key === '/') { e.preventDefault(); $('f-text').focus(); }
      if (e.key === 'p' && !e.ctrlKey && !e.metaKey && !e.altKey) { e.preventDefault(); togglePause(); }
    });
    drawSpark();
    setInterval(drawSpark, 15000);
    start();
  }

  // start reads the newest page, then watches from the event after it.
  async function start() {
    setState('connecting', 'connecting…');
    lastId = null;
    fromOffset = null;
    emptyStart = false;
    try {
      let latest = null;
      let earliest = null;
      const r = await api('/api/v1/range');
      if (r.status === 200) {
        const body = await r.json();
        latest = body.latest;
        earliest = body.earliest;
        showRange(body);
      }
      const resp = await api(apiURL('/api/v1/events', { limit: PAGE }));
      if (resp.status === 400) {
        const p = await problemOf(resp);
        setState('stopped', 'stopped');
        banner('The filter is not valid: ' + p.detail);
        $('empty').textContent = 'Nothing to show: fix or clear the filter.';
        return;
      }
      if (!resp.ok && resp.status !== 204) throw new Error('HTTP ' + resp.status);
      const list = resp.status === 204 ? [] : await resp.json();
      addNewest(list, false);
      if (list.length) {
        lastId = String(list[list.length - 1].id);
        olderCursor = list.length < PAGE && earliest !== null ? earliest : Number(list[0].id);
      } else if (latest !== null) {
        lastId = String(latest);
        olderCursor = earliest;
      } else {
        emptyStart = true;
      }
      rowsChanged();
    } catch (e) {
      if (e instanceof Unauthorized) return;
      setState('reconnecting', 'server unreachable, retrying…');
      setTimeout(start, retryMs);
      return;
    }
    refreshStatus();
    watch();
  }

  init();
})();
