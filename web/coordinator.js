// Coordinator map: the live search grid coloured by state and probability,
// responders per cell as counts (never identities), the ack panel,
// click-to-assign and reassign, covered ratio by count and by probability,
// and the alert's history. The grid and presence layers come from the hub
// as GeoJSON (no H3 code here) and light up as soon as the hub serves them.

import strings from './i18n/coordinator.js';
import {
  initI18n, wireLangSwitch, onLangChange, t, api, HubSocket, signIn, forgetToken, el, $,
  announce, toast, fmtTime, fmtDistance, debounce, showConnection, loadConfig, makeMap,
  polygonRing, ringCentre, applyAck, showCounters,
} from './common.js';

initI18n(strings);
wireLangSwitch();

const STATES = ['unassigned', 'assigned', 'searching', 'cleared', 'found', 'excluded'];
const FILL = {
  assigned: '#1e4f9c',
  searching: '#ffb000',
  cleared: '#1e6b35',
  found: '#5b1a86',
  excluded: '#4a5360',
};
const ACK_ORDER = { arrived: 0, accepted: 1, received: 2, declined: 3, pending: 4 };
const RANK = { pending: 0, received: 1, accepted: 2, declined: 2, arrived: 3 };
const MAX_ROWS = 200;
const PRESENCE_EVERY_MS = 15000;
const HISTORY_EVERY_MS = 20000;

const state = {
  token: null,
  me: null,
  socket: null,
  map: null,
  alerts: new Map(),
  selected: null,
  acks: new Map(),
  counts: null,
  grid: new Map(), // cell -> {props, ring, layer}
  gridStatus: 'unknown', // 'ok' | 'missing' | 'unknown'
  coverage: null,
  cell: null,
  layers: { circle: null, presence: null },
  presenceStatus: 'unknown',
};

// ---------------------------------------------------------------- alerts

async function loadAlerts() {
  try {
    const { alerts } = await api(state.token, '/alerts?status=active');
    state.alerts = new Map(alerts.map((a) => [a.alert.id, a]));
    if (state.selected && !state.alerts.has(state.selected)) {
      try {
        const one = await api(state.token, `/alerts/${encodeURIComponent(state.selected)}`);
        state.alerts.set(one.alert.id, one);
      } catch {
        state.selected = null;
      }
    }
    renderAlertList();
    if (!state.selected && alerts.length) await select(alerts[0].alert.id);
    else if (state.selected) await select(state.selected, { keepView: true });
  } catch (e) {
    toast(t('err_load', { reason: e.message }), 'error');
  }
}

function renderAlertList() {
  const items = [...state.alerts.values()].sort((a, b) => b.alert.issued_at - a.alert.issued_at);
  $('#alert-list').replaceChildren(
    ...items.map(({ alert, counts }) =>
      el('li', { class: 'alert-item' },
        el('button', { type: 'button', 'aria-current': alert.id === state.selected ? 'true' : 'false', onclick: () => select(alert.id) },
          el('span', { class: `state state-${alert.status}` }, t('status_' + alert.status)), ' ',
          el('strong', {}, alert.title),
          el('span', { class: 'meta' }, `${fmtTime(alert.issued_at)} · ${fmtDistance(alert.radius_m)} · ${t('list_counts', { a: counts?.accepted ?? 0, n: counts?.targeted ?? 0 })}`),
        ),
      ),
    ),
  );
  $('#alert-list-empty').hidden = items.length > 0;
}

async function select(id, { keepView = false } = {}) {
  const prev = state.selected;
  if (prev && prev !== id && state.socket?.open) state.socket.send({ type: 'unwatch', alert: prev });
  if (prev !== id) {
    state.acks = new Map();
    state.cell = null;
    clearGrid();
    state.coverage = null;
  }
  state.selected = id;
  renderAlertList();
  const entry = state.alerts.get(id);
  if (!entry) return;
  $('#acks').hidden = false;
  $('#coverage').hidden = false;
  drawCircle(entry.alert, !keepView || prev !== id);
  if (state.socket?.open) state.socket.request({ type: 'watch', alert: id }).catch(() => {});
  await Promise.all([loadAcks(id), loadGrid(id), loadPresence(id), loadHistory(id)]);
  renderCell();
}

function drawCircle(alert, fit) {
  const map = state.map;
  if (!map) return;
  const L = window.L;
  if (state.layers.circle) state.layers.circle.remove();
  state.layers.circle = L.circle([alert.center.lat, alert.center.lng], {
    radius: alert.radius_m,
    color: alert.status === 'active' ? '#a4161a' : '#4a5360',
    weight: 2,
    fill: false,
    interactive: false,
  }).addTo(map);
  if (fit) map.fitBounds(state.layers.circle.getBounds(), { padding: [20, 20] });
}

// ---------------------------------------------------------------- acks

async function loadAcks(id) {
  try {
    const res = await api(state.token, `/alerts/${encodeURIComponent(id)}/acks`);
    if (state.selected !== id) return;
    for (const r of res.responders) {
      const known = state.acks.get(r.responder);
      if (!known || (RANK[r.state] || 0) >= (RANK[known.state] || 0)) {
        state.acks.set(r.responder, { unit: r.unit, state: r.state, name: r.name || known?.name || '', at: known?.at || 0 });
      }
    }
    state.counts = res.counts;
    renderAcks();
  } catch (e) {
    toast(t('err_load', { reason: e.message }), 'error');
  }
}

const COUNTERS = ['targeted', 'delivered', 'push_sent', 'accepted', 'declined', 'arrived'];

function renderCounters() {
  const c = state.counts || {};
  $('#counters').replaceChildren(
    ...COUNTERS.map((k) => el('div', {}, el('dt', {}, t('count_' + k)), el('dd', { id: `count-${k}` }, c[k] ?? 0))),
  );
}

function cellOf(responder) {
  for (const [cell, g] of state.grid) {
    if (g.props.assignee === responder && (g.props.state === 'assigned' || g.props.state === 'searching')) return cell;
  }
  return null;
}

function renderAcks() {
  renderCounters();
  const rows = [...state.acks.entries()]
    .filter(([, r]) => r.state !== 'pending')
    .map(([responder, r]) => ({ responder, ...r }))
    .sort((a, b) => (ACK_ORDER[a.state] ?? 9) - (ACK_ORDER[b.state] ?? 9) || (b.at || 0) - (a.at || 0) || a.responder.localeCompare(b.responder));
  $('#responders').replaceChildren(
    ...rows.slice(0, MAX_ROWS).map((r) => {
      const cell = cellOf(r.responder);
      return el('tr', { dataset: { responder: r.responder, state: r.state } },
        el('td', {}, r.name || r.responder),
        el('td', {}, t('unit_' + r.unit)),
        el('td', {}, el('span', { class: `state state-${r.state}` }, t('ack_' + r.state))),
        el('td', {}, cell ? el('button', { type: 'button', class: 'btn-secondary btn-small', onclick: () => pickCell(cell, true) }, t('show_cell')) : '–'),
      );
    }),
  );
  $('#responders-more').textContent = rows.length > MAX_ROWS ? t('more_rows', { n: rows.length - MAX_ROWS }) : rows.length ? '' : t('no_answers');
  renderAssignOptions();
}

const scheduleAcks = debounce(renderAcks, 200);

// ---------------------------------------------------------------- grid

function clearGrid() {
  for (const g of state.grid.values()) g.layer?.remove();
  state.grid = new Map();
  if (state.layers.presence) state.layers.presence.clearLayers();
  $('#cells').replaceChildren();
}

async function loadGrid(id) {
  let fc;
  try {
    fc = await api(state.token, `/alerts/${encodeURIComponent(id)}/grid`);
  } catch (e) {
    if (state.selected !== id) return;
    state.gridStatus = e.status === 404 ? 'missing' : 'error';
    $('#grid-pending').hidden = false;
    renderCoverage();
    return;
  }
  if (state.selected !== id) return;
  state.gridStatus = 'ok';
  $('#grid-pending').hidden = true;
  const seen = new Set();
  for (const f of fc?.features || []) {
    const p = f.properties || {};
    if (!p.cell) continue;
    seen.add(p.cell);
    const g = state.grid.get(p.cell);
    if (g) {
      g.props = { ...g.props, ...p };
    } else {
      const ring = polygonRing(f.geometry);
      state.grid.set(p.cell, { props: p, ring, layer: null });
    }
  }
  for (const [cell, g] of state.grid) {
    if (!seen.has(cell)) {
      g.layer?.remove();
      state.grid.delete(cell);
    }
  }
  rankCells();
  drawGrid();
  renderCoverage();
  renderCells();
  renderAcks();
}

function rankCells() {
  const sorted = [...state.grid.entries()].sort((a, b) => (b[1].props.weight || 0) - (a[1].props.weight || 0));
  sorted.forEach(([, g], i) => {
    g.rank = i + 1;
  });
  state.maxWeight = sorted.length ? sorted[0][1].props.weight || 0 : 0;
}

function cellStyle(g) {
  const st = g.props.state || 'unassigned';
  const selected = state.cell === g.props.cell;
  if (st === 'unassigned') {
    const w = state.maxWeight > 0 ? (g.props.weight || 0) / state.maxWeight : 0;
    return { color: selected ? '#1b1f24' : '#7a1013', weight: selected ? 3 : 0.6, fillColor: '#d1495b', fillOpacity: 0.06 + 0.5 * w };
  }
  return {
    color: selected ? '#1b1f24' : FILL[st],
    weight: selected ? 3 : 1,
    fillColor: FILL[st],
    fillOpacity: st === 'excluded' ? 0.25 : 0.6,
    dashArray: st === 'excluded' ? '3 3' : null,
  };
}

function drawGrid() {
  const map = state.map;
  if (!map) return;
  const L = window.L;
  for (const g of state.grid.values()) {
    if (!g.layer && g.ring.length) {
      g.layer = L.polygon(g.ring, { ...cellStyle(g), bubblingMouseEvents: false }).addTo(map);
      g.layer.on('click', () => pickCell(g.props.cell, false));
    } else if (g.layer) g.layer.setStyle(cellStyle(g));
    const node = g.layer?.getElement?.();
    if (node) {
      node.setAttribute('data-cell', g.props.cell);
      node.setAttribute('data-state', g.props.state || 'unassigned');
      node.setAttribute('fill', cellStyle(g).fillColor);
    }
  }
}

function renderCoverage() {
  const c = state.coverage;
  const cells = [...state.grid.values()];
  const pct = (x) => (Number.isFinite(x) ? `${(x * 100).toFixed(1)} %` : '–');
  let byCount = c?.covered_ratio;
  let byWeight = c?.covered_ratio_weighted;
  const counts = Object.fromEntries(STATES.map((s) => [s, 0]));
  for (const g of cells) counts[g.props.state || 'unassigned'] = (counts[g.props.state || 'unassigned'] || 0) + 1;
  if (cells.length && (!Number.isFinite(byCount) || !Number.isFinite(byWeight))) {
    const searchable = cells.filter((g) => g.props.state !== 'excluded');
    const covered = searchable.filter((g) => g.props.state === 'cleared' || g.props.state === 'found');
    byCount = searchable.length ? covered.length / searchable.length : 0;
    const total = searchable.reduce((s, g) => s + (g.props.weight || 0), 0);
    byWeight = total > 0 ? covered.reduce((s, g) => s + (g.props.weight || 0), 0) / total : 0;
  }
  $('#covered-count').textContent = state.gridStatus === 'ok' ? pct(byCount) : '–';
  $('#covered-weight').textContent = state.gridStatus === 'ok' ? pct(byWeight) : '–';
  $('#cells-total').textContent = state.gridStatus === 'ok' ? cells.length : '–';
  $('#cell-counts').textContent = state.gridStatus === 'ok'
    ? STATES.filter((s) => counts[s]).map((s) => `${t('cell_' + s)} ${counts[s]}`).join(' · ')
    : '';
}

function renderCells() {
  const rows = [...state.grid.values()].sort((a, b) => a.rank - b.rank).slice(0, 100);
  $('#cells').replaceChildren(
    ...rows.map((g, i) => {
      const st = g.props.state || 'unassigned';
      return el('tr', { dataset: { cell: g.props.cell, state: st }, 'aria-selected': state.cell === g.props.cell ? 'true' : 'false' },
        el('td', {}, g.rank),
        el('td', {}, el('span', { class: `state state-${st}` }, t('cell_' + st))),
        el('td', {}, `${((g.props.weight || 0) * 100).toFixed(1)}%`),
        el('td', {}, g.props.assignee ? nameOf(g.props.assignee) : '–'),
        el('td', {}, el('button', { type: 'button', class: 'btn-secondary btn-small', tabindex: i === 0 ? '0' : '-1', 'aria-label': t('select_cell_n', { n: g.rank }), onclick: () => pickCell(g.props.cell, true) }, t('select'))),
      );
    }),
  );
}

// The cell table is one Tab stop: arrow keys (and Home / End) move between
// its rows' buttons, so keyboard users are not walked through 100 buttons.
document.getElementById('cells')?.addEventListener('keydown', (e) => {
  const buttons = [...document.querySelectorAll('#cells button')];
  const at = buttons.indexOf(document.activeElement);
  if (at < 0) return;
  const to = { ArrowDown: at + 1, ArrowUp: at - 1, Home: 0, End: buttons.length - 1 }[e.key];
  if (to === undefined || to < 0 || to >= buttons.length) return;
  e.preventDefault();
  buttons[at].tabIndex = -1;
  buttons[to].tabIndex = 0;
  buttons[to].focus();
});

function nameOf(responder) {
  return state.acks.get(responder)?.name || responder;
}

function onCoverage(msg) {
  if (msg.alert !== state.selected) return;
  state.coverage = msg;
  if (msg.reweighted || state.gridStatus !== 'ok') {
    loadGrid(msg.alert);
    return;
  }
  let unknown = false;
  for (const c of msg.cells || []) {
    const g = state.grid.get(c.cell);
    if (!g) {
      unknown = true;
      continue;
    }
    const before = g.props.state;
    g.props = { ...g.props, ...c };
    if (before !== c.state && c.state === 'found') announce(t('cell_found_announce'), { assertive: true });
  }
  if (unknown) {
    loadGrid(msg.alert);
    return;
  }
  rankCells();
  drawGrid();
  renderCoverage();
  scheduleCells();
  scheduleAcks();
  renderCell();
}

const scheduleCells = debounce(renderCells, 300);

// ---------------------------------------------------------------- presence

async function loadPresence(id) {
  if (!state.map) return;
  const L = window.L;
  let fc;
  try {
    fc = await api(state.token, `/alerts/${encodeURIComponent(id)}/presence`);
  } catch (e) {
    state.presenceStatus = e.status === 404 ? 'missing' : 'error';
    return;
  }
  if (state.selected !== id) return;
  state.presenceStatus = 'ok';
  if (!state.layers.presence) state.layers.presence = L.layerGroup().addTo(state.map);
  state.layers.presence.clearLayers();
  for (const f of fc?.features || []) {
    const n = f.properties?.count;
    if (!n) continue;
    const ring = polygonRing(f.geometry);
    const c = f.properties.center || (ring.length ? ringCentre(ring) : null);
    if (!c) continue;
    const icon = L.divIcon({ className: 'cell-count', html: String(Number(n) | 0), iconSize: null });
    L.marker([c.lat, c.lng], { icon, interactive: false, keyboard: false }).addTo(state.layers.presence);
  }
}

// ---------------------------------------------------------------- assign

function pickCell(cell, fromKeyboard) {
  state.cell = cell;
  drawGrid();
  renderCell();
  renderCells();
  const g = state.grid.get(cell);
  if (state.map && g?.ring.length && fromKeyboard) state.map.panTo(ringCentre(g.ring));
  if (fromKeyboard) $('#assign-to').focus();
}

function renderCell() {
  const g = state.cell ? state.grid.get(state.cell) : null;
  $('#cell-none').hidden = !!g;
  $('#cell-detail').hidden = !g;
  if (!g) return;
  const st = g.props.state || 'unassigned';
  const chip = $('#cell-state');
  chip.className = `state state-${st}`;
  chip.textContent = t('cell_' + st);
  $('#cell-meta').textContent = t('cell_meta', { n: g.rank, w: ((g.props.weight || 0) * 100).toFixed(1), id: g.props.cell });
  $('#cell-assignee').textContent = g.props.assignee ? t('assignee_is', { name: nameOf(g.props.assignee) }) : t('assignee_none');
  const active = st === 'assigned' || st === 'searching';
  $('#assign-btn').textContent = t(active ? 'reassign' : 'assign');
  $('#assign-btn').disabled = st === 'found' || st === 'excluded';
  renderAssignOptions();
}

function renderAssignOptions() {
  const sel = $('#assign-to');
  if (!sel) return;
  const keep = sel.value;
  const g = state.cell ? state.grid.get(state.cell) : null;
  const ready = [...state.acks.entries()]
    .filter(([, r]) => r.state === 'accepted' || r.state === 'arrived')
    .map(([responder, r]) => ({ responder, ...r, cell: cellOf(responder) }))
    .filter((r) => !g || r.responder !== g.props.assignee || !(g.props.state === 'assigned' || g.props.state === 'searching'))
    .sort((a, b) => (a.cell ? 1 : 0) - (b.cell ? 1 : 0) || (a.name || a.responder).localeCompare(b.name || b.responder));
  sel.replaceChildren(
    ...(ready.length ? [] : [el('option', { value: '' }, t('nobody_ready'))]),
    ...ready.map((r) => el('option', { value: r.responder }, `${r.name || r.responder} · ${t('unit_' + r.unit)} · ${t('ack_' + r.state)}${r.cell ? ' · ' + t('has_cell') : ''}`)),
  );
  if (keep && ready.some((r) => r.responder === keep)) sel.value = keep;
}

async function assign(ev) {
  ev.preventDefault();
  const err = $('#assign-error');
  err.textContent = '';
  const responder = $('#assign-to').value;
  if (!state.cell || !responder) {
    err.textContent = t('err_pick');
    return;
  }
  const btn = $('#assign-btn');
  btn.disabled = true;
  try {
    await api(state.token, `/alerts/${encodeURIComponent(state.selected)}/assign`, { method: 'POST', body: { cell: state.cell, responder } });
    toast(t('assigned_ok', { name: nameOf(responder) }), 'ok');
    announce(t('assigned_ok', { name: nameOf(responder) }));
    await loadGrid(state.selected);
    renderCell();
  } catch (e) {
    err.textContent = t('err_assign', { reason: e.message });
  } finally {
    btn.disabled = false;
  }
}

// ---------------------------------------------------------------- history

async function loadHistory(id) {
  let h;
  try {
    h = await api(state.token, `/alerts/${encodeURIComponent(id)}/history`);
  } catch {
    return;
  }
  if (state.selected !== id) return;
  const items = [];
  for (const ev of h.events || []) {
    const e = ev.event || {};
    const a = e.alert || {};
    let text;
    if (e.type === 'alert' && a.version === 1) text = t('h_issued', { title: a.title || '', r: fmtDistance(a.radius_m) });
    else if (e.type === 'alert') text = t('h_targeted_more');
    else if (e.type === 'alert_update' && a.status && a.status !== 'active') text = t('h_closed_' + a.status, { outcome: a.outcome || '' });
    else if (e.type === 'alert_update') text = t('h_updated', { v: a.version, r: fmtDistance(a.radius_m) });
    else if (e.type === 'assignment') text = t('h_assignment', { cell: e.cell || '' });
    else text = e.type || '?';
    items.push({ at: ev.at, text, key: `e${ev.seq}` });
  }
  for (const ack of h.acks || []) {
    items.push({ at: ack.at, text: t('h_ack', { name: ack.name || ack.responder, state: t('ack_' + ack.state) }), key: `a${ack.responder}${ack.at}${ack.state}` });
  }
  for (const c of h.cells || []) {
    items.push({ at: c.changed_at || c.at, text: t('h_cell', { state: t('cell_' + c.state), by: c.changed_by || '' }), key: `c${c.cell}${c.changed_at}` });
  }
  items.sort((a, b) => b.at - a.at);
  $('#history').replaceChildren(
    ...items.slice(0, 150).map((i) => el('li', {}, el('time', { datetime: new Date(i.at).toISOString() }, fmtTime(i.at)), i.text)),
  );
}

// ---------------------------------------------------------------- live

function onMessage(msg) {
  switch (msg.type) {
    case 'alert':
    case 'alert_update': {
      const a = msg.alert;
      if (!a) return;
      const cur = state.alerts.get(a.id);
      if (cur && cur.alert.version > a.version) return;
      state.alerts.set(a.id, { alert: a, counts: cur?.counts || null });
      renderAlertList();
      if (!state.selected && a.status === 'active') select(a.id);
      else if (state.selected === a.id) {
        drawCircle(a, false);
        loadHistory(a.id);
        if (msg.type === 'alert_update' && cur && cur.alert.radius_m !== a.radius_m) loadGrid(a.id);
      }
      if (!cur && a.status === 'active') announce(t('new_alert_seen', { title: a.title }));
      break;
    }
    case 'ack_summary': {
      const e = state.alerts.get(msg.alert);
      if (e) e.counts = msg.counts;
      if (msg.alert === state.selected) {
        state.counts = msg.counts;
        showCounters(msg.counts, COUNTERS);
      }
      renderAlertList();
      break;
    }
    case 'ack': {
      if (msg.alert !== state.selected) return;
      if (applyAck(state.acks, msg)) scheduleAcks();
      break;
    }
    case 'coverage':
      onCoverage(msg);
      break;
    default:
      break;
  }
}

function renderLegend() {
  $('#legend').replaceChildren(
    el('li', {}, el('span', { class: 'swatch', style: 'background:#d1495b;opacity:.55' }), t('legend_unassigned')),
    ...['assigned', 'searching', 'cleared', 'found', 'excluded'].map((s) => el('li', {}, el('span', { class: 'swatch', style: `background:${FILL[s]}` }), t('cell_' + s))),
    el('li', {}, el('span', { class: 'cell-count', style: 'display:inline-block;margin-right:4px' }, '3'), t('legend_count')),
  );
}

// ---------------------------------------------------------------- start

async function main() {
  const { token, me } = await signIn('coordinator', ['coordinator', 'police']);
  state.token = token;
  state.me = me;
  $('#app').hidden = false;
  $('#who').textContent = me.name || me.sub;
  $('#signout').hidden = false;
  $('#signout').addEventListener('click', () => {
    forgetToken('coordinator');
    location.reload();
  });
  $('#assign-form').addEventListener('submit', assign);
  $('#history-refresh').addEventListener('click', () => state.selected && loadHistory(state.selected));
  renderLegend();
  renderCounters();

  const cfg = await loadConfig();
  state.map = makeMap($('#map'), cfg, { label: 'map_label' });

  state.socket = new HubSocket({
    token,
    onEvent: (kind, data) => {
      if (kind === 'status') showConnection(data);
      else if (kind === 'retry') showConnection('offline', data);
      else if (kind === 'unauthorized') {
        forgetToken('coordinator');
        toast(t('session_ended'), 'error');
      } else if (kind === 'welcome') loadAlerts();
      else if (kind === 'message') onMessage(data);
    },
  });
  state.socket.start();
  await loadAlerts();

  setInterval(() => state.selected && state.presenceStatus !== 'missing' && loadPresence(state.selected), PRESENCE_EVERY_MS);
  setInterval(() => state.selected && loadHistory(state.selected), HISTORY_EVERY_MS);
  setInterval(() => state.selected && state.gridStatus === 'missing' && loadGrid(state.selected), PRESENCE_EVERY_MS);
  onLangChange(() => {
    renderLegend();
    renderAlertList();
    renderAcks();
    renderCoverage();
    renderCells();
    renderCell();
    if (state.selected) loadHistory(state.selected);
  });
}

main();
