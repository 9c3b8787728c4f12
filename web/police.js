// Police console: sign in, place an alert on the map (click the last-seen
// point, drag the radius), see a live dry-run count, confirm in two steps
// naming the count, then follow it: live counters, the responder list, and
// update / widen / cancel / resolve.

import strings from './i18n/police.js';
import {
  initI18n, wireLangSwitch, onLangChange, t, api, HubSocket, signIn, forgetToken, el, $,
  announce, toast, fmtTime, fmtDistance, debounce, showConnection, loadConfig, makeMap, hasMap,
  applyAck, showCounters,
} from './common.js';

initI18n(strings);
wireLangSwitch();

const ACK_ORDER = { arrived: 0, accepted: 1, received: 2, declined: 3, pending: 4 };
const RANK = { received: 1, accepted: 2, declined: 2, arrived: 3 };
const MAX_ROWS = 300;

const state = {
  token: null,
  me: null,
  socket: null,
  map: null,
  draft: { lat: null, lng: null, radius: 1500 },
  alerts: new Map(), // id -> {alert, counts}
  selected: null,
  acks: new Map(), // responder -> {unit, state, name, at}
  layers: { draft: null, handle: null, centre: null, alerts: new Map() },
  previewAbort: null,
  lastPreview: null,
  confirming: false,
};

// ---------------------------------------------------------------- draft

function audience() {
  return [...document.querySelectorAll('input[name=audience]:checked')].map((i) => i.value);
}

function draftBody() {
  const body = {
    kind: $('#kind').value,
    title: $('#title').value.trim(),
    body: $('#body').value.trim(),
    lat: state.draft.lat,
    lng: state.draft.lng,
    radius_m: state.draft.radius,
    audience: audience(),
    severity: $('#severity').value,
    urgency: 'immediate',
    expires_in_s: Number($('#expires').value),
  };
  if ($('#subject').value) body.subject = $('#subject').value;
  return body;
}

function setCentre(lat, lng, { fromInput = false } = {}) {
  if (!Number.isFinite(lat) || !Number.isFinite(lng)) return;
  state.draft.lat = lat;
  state.draft.lng = lng;
  if (!fromInput) {
    $('#lat').value = lat.toFixed(5);
    $('#lng').value = lng.toFixed(5);
  }
  drawDraft();
  schedulePreview();
}

function setRadius(r, { fromInput = false, fromRange = false } = {}) {
  if (!Number.isFinite(r)) return;
  r = Math.max(100, Math.min(20000, Math.round(r / 10) * 10));
  state.draft.radius = r;
  if (!fromInput) $('#radius').value = r;
  if (!fromRange) $('#radius-range').value = r;
  drawDraft();
  schedulePreview();
}

function handlePoint() {
  // The handle sits on the circle's east edge.
  const { lat, lng, radius } = state.draft;
  const dLng = radius / (111320 * Math.cos((lat * Math.PI) / 180));
  return [lat, lng + dLng];
}

function drawDraft() {
  const map = state.map;
  if (!map || state.draft.lat === null) return;
  const L = window.L;
  const centre = [state.draft.lat, state.draft.lng];
  if (!state.layers.draft) {
    state.layers.draft = L.circle(centre, { radius: state.draft.radius, color: '#0b4f8a', weight: 2, fillOpacity: 0.12, interactive: false }).addTo(map);
    state.layers.centre = L.marker(centre, { draggable: true, title: t('marker_centre'), alt: t('marker_centre'), keyboard: false }).addTo(map);
    state.layers.centre.on('drag', (ev) => {
      const p = ev.target.getLatLng();
      state.draft.lat = p.lat;
      state.draft.lng = p.lng;
      $('#lat').value = p.lat.toFixed(5);
      $('#lng').value = p.lng.toFixed(5);
      state.layers.draft.setLatLng(p);
      state.layers.handle.setLatLng(handlePoint());
    });
    state.layers.centre.on('dragend', () => schedulePreview());
    const icon = L.divIcon({ className: 'radius-handle', iconSize: [18, 18] });
    state.layers.handle = L.marker(handlePoint(), { draggable: true, icon, title: t('marker_radius'), keyboard: false, autoPan: false }).addTo(map);
    state.layers.handle.on('drag', (ev) => {
      const r = map.distance(L.latLng(state.draft.lat, state.draft.lng), ev.target.getLatLng());
      const rr = Math.max(100, Math.min(20000, Math.round(r / 10) * 10));
      state.draft.radius = rr;
      $('#radius').value = rr;
      $('#radius-range').value = rr;
      state.layers.draft.setRadius(rr);
    });
    state.layers.handle.on('dragend', () => {
      state.layers.handle.setLatLng(handlePoint());
      schedulePreview();
    });
  } else {
    state.layers.draft.setLatLng(centre);
    state.layers.draft.setRadius(state.draft.radius);
    state.layers.centre.setLatLng(centre);
    state.layers.handle.setLatLng(handlePoint());
  }
}

const schedulePreview = debounce(runPreview, 250);

async function runPreview() {
  const body = draftBody();
  if (body.lat === null || !body.audience.length) {
    state.lastPreview = null;
    renderPreview();
    return null;
  }
  if (!body.title) body.title = 'preview';
  if (state.previewAbort) state.previewAbort.abort();
  const ctl = new AbortController();
  state.previewAbort = ctl;
  try {
    const p = await api(state.token, '/alerts/preview', { method: 'POST', body, signal: ctl.signal });
    state.lastPreview = { ...p, radius: body.radius_m, lat: body.lat, lng: body.lng, audience: body.audience };
    renderPreview();
    return state.lastPreview;
  } catch (e) {
    if (e.name === 'AbortError') return null;
    state.lastPreview = { error: e.message };
    renderPreview();
    return null;
  }
}

function unitBreakdown(byUnit) {
  return ['volunteer', 'patrol', 'staff']
    .filter((u) => byUnit && u in byUnit)
    .map((u) => t('unit_count_' + u, { n: byUnit[u] }))
    .join(' · ');
}

function renderPreview() {
  const box = $('#preview');
  const p = state.lastPreview;
  if (state.draft.lat === null) {
    box.replaceChildren(el('span', {}, t('preview_none')));
    return;
  }
  if (!audience().length) {
    box.replaceChildren(el('span', {}, t('preview_no_audience')));
    return;
  }
  if (!p) {
    box.replaceChildren(el('span', {}, t('preview_loading')));
    return;
  }
  if (p.error) {
    box.replaceChildren(el('span', { class: 'error-text' }, t('preview_failed', { reason: p.error })));
    return;
  }
  box.replaceChildren(
    el('div', {}, t('preview_would_reach')),
    el('div', { class: 'big', id: 'preview-count', dataset: { count: p.targeted } }, t('preview_count', { n: p.targeted })),
    el('div', { class: 'hint' }, unitBreakdown(p.by_unit)),
    el('div', { class: 'hint' }, t('preview_live', { n: p.live, cells: p.cells, r: fmtDistance(p.radius) })),
  );
}

function wireForm() {
  $('#lat').addEventListener('change', () => setCentre(Number($('#lat').value), Number($('#lng').value || state.draft.lng), { fromInput: true }));
  $('#lng').addEventListener('change', () => setCentre(Number($('#lat').value || state.draft.lat), Number($('#lng').value), { fromInput: true }));
  $('#radius').addEventListener('change', () => setRadius(Number($('#radius').value), { fromInput: true }));
  $('#radius-range').addEventListener('input', () => setRadius(Number($('#radius-range').value), { fromRange: true }));
  for (const box of document.querySelectorAll('input[name=audience]')) box.addEventListener('change', schedulePreview);
  $('#issue-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    await review();
  });
  $('#confirm-back').addEventListener('click', () => endConfirm(true));
  $('#confirm-send').addEventListener('click', send);
}

async function review() {
  const err = $('#issue-error');
  err.textContent = '';
  const body = draftBody();
  if (body.lat === null || !Number.isFinite(body.lat)) {
    err.textContent = t('err_no_centre');
    $('#lat').focus();
    return;
  }
  if (!body.title) {
    err.textContent = t('err_no_title');
    $('#title').focus();
    return;
  }
  if (!body.audience.length) {
    err.textContent = t('err_no_audience');
    return;
  }
  const p = await runPreview();
  if (!p) {
    err.textContent = t('err_preview');
    return;
  }
  state.confirming = true;
  state.confirmBody = body;
  state.confirmCount = p.targeted;
  $('#confirm-text').textContent = t('confirm_text', { n: p.targeted, units: unitBreakdown(p.by_unit), r: fmtDistance(body.radius_m) });
  $('#confirm-send').textContent = t('confirm_send', { n: p.targeted });
  $('#confirm-send').disabled = false;
  $('#confirm').hidden = false;
  $('#review').hidden = true;
  for (const input of $('#issue-form').querySelectorAll('input, select, textarea')) input.disabled = true;
  $('#confirm-text').focus();
}

function endConfirm(focusReview) {
  state.confirming = false;
  $('#confirm').hidden = true;
  $('#review').hidden = false;
  for (const input of $('#issue-form').querySelectorAll('input, select, textarea')) input.disabled = false;
  if (focusReview) $('#review').focus();
}

async function send() {
  const btn = $('#confirm-send');
  btn.disabled = true;
  try {
    const out = await api(state.token, '/alerts', { method: 'POST', body: state.confirmBody });
    endConfirm(false);
    toast(t('sent', { n: out.targeted, live: out.delivered_live }), 'ok');
    announce(t('sent', { n: out.targeted, live: out.delivered_live }));
    upsertAlert(out.alert, { targeted: out.targeted, delivered: out.delivered_live, push_sent: out.push_queued || 0, received: 0, accepted: 0, declined: 0, arrived: 0 });
    $('#title').value = '';
    $('#body').value = '';
    clearDraft();
    select(out.alert.id);
  } catch (e) {
    btn.disabled = false;
    $('#issue-error').textContent = t('err_send', { reason: e.message });
  }
}

function clearDraft() {
  for (const k of ['draft', 'centre', 'handle']) {
    if (state.layers[k]) state.layers[k].remove();
    state.layers[k] = null;
  }
  state.draft.lat = null;
  state.draft.lng = null;
  $('#lat').value = '';
  $('#lng').value = '';
  state.lastPreview = null;
  renderPreview();
}

// ---------------------------------------------------------------- alerts

async function loadAlerts() {
  try {
    const { alerts } = await api(state.token, '/alerts?status=active');
    const seen = new Set();
    for (const a of alerts) {
      seen.add(a.alert.id);
      upsertAlert(a.alert, a.counts, { render: false });
    }
    for (const id of [...state.alerts.keys()]) if (!seen.has(id) && state.alerts.get(id).alert.status === 'active') state.alerts.delete(id);
    renderAlertList();
    drawAlerts();
    if (state.selected && state.alerts.has(state.selected)) await select(state.selected, { quiet: true });
  } catch (e) {
    toast(t('err_load', { reason: e.message }), 'error');
  }
}

function upsertAlert(alert, counts, { render = true } = {}) {
  const cur = state.alerts.get(alert.id);
  if (cur && cur.alert.version > alert.version) return;
  state.alerts.set(alert.id, { alert, counts: counts || cur?.counts || null });
  if (render) {
    renderAlertList();
    drawAlerts();
    if (state.selected === alert.id) renderCurrent();
  }
}

function renderAlertList() {
  const list = $('#alert-list');
  const items = [...state.alerts.values()].sort((a, b) => b.alert.issued_at - a.alert.issued_at);
  list.replaceChildren(
    ...items.map(({ alert, counts }) =>
      el('li', { class: 'alert-item' },
        el('button', { type: 'button', 'aria-current': state.selected === alert.id ? 'true' : 'false', onclick: () => select(alert.id) },
          el('span', { class: `state state-${alert.status}` }, t('status_' + alert.status)), ' ',
          el('strong', {}, alert.title),
          el('span', { class: 'meta' }, `${fmtTime(alert.issued_at)} · ${fmtDistance(alert.radius_m)}${counts ? ' · ' + t('list_counts', { n: counts.targeted, a: counts.accepted }) : ''}`),
        ),
      ),
    ),
  );
  $('#alert-list-empty').hidden = items.length > 0;
}

function drawAlerts() {
  const map = state.map;
  if (!map) return;
  const L = window.L;
  for (const [id, layer] of state.layers.alerts) {
    if (!state.alerts.has(id)) {
      layer.remove();
      state.layers.alerts.delete(id);
    }
  }
  for (const { alert } of state.alerts.values()) {
    const sel = alert.id === state.selected;
    const style = {
      color: alert.status === 'active' ? '#a4161a' : '#4a5360',
      weight: sel ? 3 : 1.5,
      dashArray: sel ? null : '6 6',
      fillOpacity: sel ? 0.08 : 0.03,
      interactive: false,
    };
    let layer = state.layers.alerts.get(alert.id);
    if (!layer) {
      layer = L.circle([alert.center.lat, alert.center.lng], { radius: alert.radius_m, ...style }).addTo(map);
      state.layers.alerts.set(alert.id, layer);
    } else {
      layer.setRadius(alert.radius_m);
      layer.setStyle(style);
    }
  }
}

async function select(id, { quiet = false } = {}) {
  const prev = state.selected;
  if (prev && prev !== id && state.socket.open) state.socket.send({ type: 'unwatch', alert: prev });
  state.selected = id;
  if (prev !== id) state.acks = new Map();
  closeForms();
  renderAlertList();
  drawAlerts();
  renderCurrent();
  $('#current').hidden = false;
  if (state.socket.open) state.socket.request({ type: 'watch', alert: id }).catch(() => {});
  try {
    const res = await api(state.token, `/alerts/${encodeURIComponent(id)}/acks`);
    if (state.selected !== id) return;
    for (const r of res.responders) {
      const known = state.acks.get(r.responder);
      if (!known || (RANK[r.state] || 0) >= (RANK[known.state] || 0)) {
        state.acks.set(r.responder, { unit: r.unit, state: r.state, name: r.name || known?.name || '', at: known?.at || 0 });
      }
    }
    const entry = state.alerts.get(id);
    if (entry) entry.counts = res.counts;
    renderCurrent();
  } catch (e) {
    if (!quiet) toast(t('err_load', { reason: e.message }), 'error');
  }
  if (!quiet && state.map) {
    const a = state.alerts.get(id)?.alert;
    if (a) state.map.setView([a.center.lat, a.center.lng], state.map.getZoom());
  }
}

const COUNTERS = ['targeted', 'delivered', 'push_sent', 'accepted', 'declined', 'arrived'];

function renderCurrent() {
  const entry = state.alerts.get(state.selected);
  if (!entry) {
    $('#current').hidden = true;
    return;
  }
  const { alert, counts } = entry;
  $('#current-h').textContent = alert.title;
  const st = $('#current-status');
  st.className = `state state-${alert.status}`;
  st.textContent = t('status_' + alert.status);
  $('#current-meta').textContent = t('current_meta', { time: fmtTime(alert.issued_at), r: fmtDistance(alert.radius_m), v: alert.version });
  $('#counters').replaceChildren(
    ...COUNTERS.map((k) => el('div', {}, el('dt', {}, t('count_' + k)), el('dd', { id: `count-${k}` }, counts ? counts[k] ?? 0 : '–'))),
  );
  const active = alert.status === 'active';
  for (const b of ['#act-update', '#act-widen', '#act-resolve', '#act-cancel']) $(b).disabled = !active;
  renderResponders();
}

function renderResponders() {
  const rows = [...state.acks.entries()]
    .map(([responder, r]) => ({ responder, ...r }))
    .sort((a, b) => (ACK_ORDER[a.state] ?? 9) - (ACK_ORDER[b.state] ?? 9) || (b.at || 0) - (a.at || 0) || a.responder.localeCompare(b.responder));
  $('#responders').replaceChildren(
    ...rows.slice(0, MAX_ROWS).map((r) =>
      el('tr', { dataset: { responder: r.responder, state: r.state } },
        el('td', {}, r.name || r.responder),
        el('td', {}, t('unit_' + r.unit)),
        el('td', {}, el('span', { class: `state state-${r.state}` }, t('ack_' + r.state))),
      ),
    ),
  );
  $('#responders-more').textContent = rows.length > MAX_ROWS ? t('more_rows', { n: rows.length - MAX_ROWS }) : rows.length ? '' : t('no_responders');
}

// ---------------------------------------------------------------- manage

function closeForms() {
  for (const f of ['#update-form', '#widen-form', '#resolve-form', '#cancel-form']) $(f).hidden = true;
}

function openForm(sel, focus) {
  closeForms();
  $(sel).hidden = false;
  $(focus || `${sel} input, ${sel} select, ${sel} button`).focus();
}

function wireManage() {
  $('#act-update').addEventListener('click', () => {
    const a = state.alerts.get(state.selected)?.alert;
    if (!a) return;
    $('#upd-title').value = a.title;
    $('#upd-body').value = a.body;
    openForm('#update-form', '#upd-title');
  });
  $('#act-widen').addEventListener('click', () => {
    const a = state.alerts.get(state.selected)?.alert;
    if (!a) return;
    $('#widen-radius').value = Math.min(20000, Math.round(a.radius_m + 500));
    $('#widen-preview').textContent = '';
    openForm('#widen-form', '#widen-radius');
    widenPreview();
  });
  $('#widen-radius').addEventListener('input', debounce(widenPreview, 250));
  $('#act-resolve').addEventListener('click', () => openForm('#resolve-form', '#outcome'));
  $('#act-cancel').addEventListener('click', () => openForm('#cancel-form', '#cancel-form button'));
  for (const b of document.querySelectorAll('.form-close')) b.addEventListener('click', () => {
    closeForms();
    $('#act-update').focus();
  });

  $('#update-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    manage('update', { title: $('#upd-title').value, body: $('#upd-body').value }, 'done_update');
  });
  $('#widen-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    manage('update', { radius_m: Number($('#widen-radius').value) }, 'done_widen');
  });
  $('#resolve-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    manage('resolve', { outcome: $('#outcome').value }, 'done_resolve');
  });
  $('#cancel-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    manage('cancel', {}, 'done_cancel');
  });
}

async function widenPreview() {
  const entry = state.alerts.get(state.selected);
  if (!entry) return;
  const a = entry.alert;
  const r = Number($('#widen-radius').value);
  if (!Number.isFinite(r) || r <= a.radius_m) {
    $('#widen-preview').textContent = t('widen_must_grow', { r: fmtDistance(a.radius_m) });
    return;
  }
  try {
    const p = await api(state.token, '/alerts/preview', {
      method: 'POST',
      body: { kind: a.kind, title: a.title, body: '', lat: a.center.lat, lng: a.center.lng, radius_m: r, audience: a.audience },
    });
    const already = entry.counts?.targeted ?? 0;
    $('#widen-preview').textContent = t('widen_preview', { n: p.targeted, add: Math.max(0, p.targeted - already) });
  } catch (e) {
    $('#widen-preview').textContent = t('preview_failed', { reason: e.message });
  }
}

async function manage(action, body, doneKey) {
  const id = state.selected;
  try {
    const out = await api(state.token, `/alerts/${encodeURIComponent(id)}/${action}`, { method: 'POST', body });
    const entry = state.alerts.get(id);
    upsertAlert(out.alert, entry?.counts);
    if (action === 'update' && typeof out.targeted === 'number' && entry?.counts) {
      entry.counts = { ...entry.counts, targeted: out.targeted };
    }
    closeForms();
    renderCurrent();
    toast(t(doneKey, { n: out.newly_targeted ?? 0 }), 'ok');
    announce(t(doneKey, { n: out.newly_targeted ?? 0 }));
    $('#act-update').focus();
  } catch (e) {
    toast(t('err_action', { reason: e.message }), 'error');
  }
}

// ---------------------------------------------------------------- live

function onWelcome() {
  loadAlerts();
}

function onMessage(msg) {
  switch (msg.type) {
    case 'alert':
    case 'alert_update': {
      const a = msg.alert;
      if (!a) return;
      const had = state.alerts.has(a.id);
      upsertAlert(a, state.alerts.get(a.id)?.counts);
      if (!had && a.status === 'active') announce(t('new_alert_seen', { title: a.title }));
      break;
    }
    case 'ack_summary': {
      const entry = state.alerts.get(msg.alert);
      if (!entry) return;
      entry.counts = msg.counts;
      if (msg.alert === state.selected) showCounters(msg.counts, COUNTERS);
      renderAlertList();
      break;
    }
    case 'ack': {
      if (msg.alert !== state.selected) return;
      if (applyAck(state.acks, msg)) scheduleResponders();
      break;
    }
    default:
      break;
  }
}

const scheduleResponders = debounce(renderResponders, 150);


// ---------------------------------------------------------------- start

async function main() {
  const { token, me } = await signIn('police', ['police']);
  state.token = token;
  state.me = me;
  $('#app').hidden = false;
  $('#who').textContent = me.name || me.sub;
  $('#signout').hidden = false;
  $('#signout').addEventListener('click', () => {
    forgetToken('police');
    location.reload();
  });

  const cfg = await loadConfig();
  state.map = makeMap($('#map'), cfg, { label: 'map_label' });
  if (state.map) {
    state.map.on('click', (ev) => {
      if (state.confirming) return;
      setCentre(ev.latlng.lat, ev.latlng.lng);
    });
  }
  wireForm();
  wireManage();

  state.socket = new HubSocket({
    token,
    onEvent: (kind, data) => {
      if (kind === 'status') showConnection(data);
      else if (kind === 'retry') showConnection('offline', data);
      else if (kind === 'unauthorized') {
        forgetToken('police');
        toast(t('session_ended'), 'error');
      } else if (kind === 'welcome') onWelcome();
      else if (kind === 'message') onMessage(data);
    },
  });
  state.socket.start();
  await loadAlerts();
  if (!hasMap()) $('#preview').after(el('p', { class: 'notice' }, t('map_missing')));
  onLangChange(() => {
    renderAlertList();
    renderCurrent();
    renderPreview();
  });
}

main();
