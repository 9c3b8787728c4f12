// Responder app (installable PWA): an on/off duty switch that shares the
// location with consent, a full-screen alarm with sound and vibration,
// accept / decline / arrived, the assigned search cell on the map with a
// route hint and searching / cleared / found, reconnection with since_seq
// that shows what was missed once, and Web Push registration via /push.js.

import strings from './i18n/responder.js';
import {
  initI18n, wireLangSwitch, onLangChange, t, HubSocket, signIn, forgetToken, el, $, storage,
  announce, toast, fmtTime, fmtDistance, debounce, showConnection, loadConfig, makeMap,
  distanceM, bearingDeg, compassKey, ringCentre, registerServiceWorker,
} from './common.js';

initI18n(strings);
wireLangSwitch();

const RANK = { pending: 0, received: 1, accepted: 2, declined: 2, arrived: 3 };
const MAX_KEPT = 30;
const RESEND_MS = 120000;
const MOVE_M = 25;

const state = {
  token: null,
  me: null,
  socket: null,
  map: null,
  entries: new Map(), // alert id -> {alert, my, assignment, cell_state}
  current: null,
  pending: new Map(), // key -> client message to resend until ok
  duty: false,
  watchId: null,
  picking: false,
  pos: null, // {lat, lng, acc, manual}
  sent: null, // {lat, lng, at}
  locError: null,
  replayUpto: 0,
  missed: [],
  alarmFor: null,
  layers: { me: null, alert: null, cell: null, route: null },
  keys: {},
};

// ---------------------------------------------------------------- storage

function loadLocal() {
  try {
    const list = JSON.parse(storage.get(state.keys.alerts) || '[]');
    for (const e of list) if (e?.alert?.id) state.entries.set(e.alert.id, e);
    const pend = JSON.parse(storage.get(state.keys.pending) || '[]');
    for (const [k, v] of pend) state.pending.set(k, v);
  } catch {
    /* start clean */
  }
}

function saveLocal() {
  const list = [...state.entries.values()].sort((a, b) => b.alert.issued_at - a.alert.issued_at).slice(0, MAX_KEPT);
  storage.set(state.keys.alerts, JSON.stringify(list));
  storage.set(state.keys.pending, JSON.stringify([...state.pending.entries()]));
}

// ---------------------------------------------------------------- duty and location

function setDuty(on) {
  state.duty = on;
  storage.set(state.keys.duty, on ? '1' : '0');
  const sw = $('#duty');
  sw.setAttribute('aria-checked', on ? 'true' : 'false');
  $('#duty-label').textContent = t(on ? 'duty_on' : 'duty_off');
  if (on) startLocation();
  else stopLocation();
  renderLocation();
}

function startLocation() {
  if (state.picking || state.pos?.manual) {
    maybeSendLocation(true);
    return;
  }
  if (!('geolocation' in navigator)) {
    state.locError = 'unsupported';
    renderLocation();
    return;
  }
  if (state.watchId !== null) return;
  state.watchId = navigator.geolocation.watchPosition(
    (p) => {
      if (state.pos?.manual) return;
      state.locError = null;
      state.pos = { lat: p.coords.latitude, lng: p.coords.longitude, acc: p.coords.accuracy, manual: false };
      drawMe();
      maybeSendLocation(false);
      renderLocation();
      renderCurrent();
    },
    (err) => {
      state.locError = err.code === 1 ? 'denied' : 'unavailable';
      renderLocation();
    },
    { enableHighAccuracy: true, maximumAge: 15000, timeout: 30000 },
  );
}

function stopLocation() {
  if (state.watchId !== null && 'geolocation' in navigator) navigator.geolocation.clearWatch(state.watchId);
  state.watchId = null;
}

async function maybeSendLocation(force) {
  if (!state.duty || !state.pos || !state.socket?.open) return;
  const now = Date.now();
  if (!force && state.sent) {
    const moved = distanceM(state.sent, state.pos);
    if (moved < MOVE_M && now - state.sent.at < RESEND_MS) return;
  }
  const msg = { type: 'location', lat: state.pos.lat, lng: state.pos.lng };
  if (Number.isFinite(state.pos.acc)) msg.accuracy_m = Math.round(state.pos.acc);
  try {
    await state.socket.request(msg);
    state.sent = { lat: msg.lat, lng: msg.lng, at: now };
    renderLocation();
  } catch (e) {
    if (e.code !== 'offline' && e.code !== 'timeout') toast(t('err_location', { reason: e.message }), 'error');
  }
}

function renderLocation() {
  const line = $('#loc-status');
  if (!state.duty) line.textContent = t('loc_off');
  else if (state.locError && !state.pos) line.textContent = t('loc_error_' + state.locError);
  else if (!state.pos) line.textContent = t('loc_waiting');
  else if (!state.sent) line.textContent = t('loc_not_sent');
  else {
    line.textContent = t(state.pos.manual ? 'loc_sent_manual' : 'loc_sent', {
      time: fmtTime(state.sent.at),
      acc: Number.isFinite(state.pos.acc) ? Math.round(state.pos.acc) : '?',
    });
  }
  $('#pick-location').setAttribute('aria-pressed', state.picking ? 'true' : 'false');
  $('#pick-location').textContent = t(state.picking ? 'pick_location_active' : 'pick_location');
}

// ---------------------------------------------------------------- sound and vibration

let audio = null;
let beepTimer = null;

function unlockAudio() {
  if (audio) {
    if (audio.state === 'suspended') audio.resume().catch(() => {});
    return;
  }
  const Ctx = window.AudioContext || window.webkitAudioContext;
  if (!Ctx) return;
  try {
    audio = new Ctx();
  } catch {
    audio = null;
  }
}

function beep(freq, at, dur) {
  const osc = audio.createOscillator();
  const gain = audio.createGain();
  osc.type = 'square';
  osc.frequency.value = freq;
  gain.gain.setValueAtTime(0.0001, at);
  gain.gain.exponentialRampToValueAtTime(0.35, at + 0.02);
  gain.gain.exponentialRampToValueAtTime(0.0001, at + dur);
  osc.connect(gain).connect(audio.destination);
  osc.start(at);
  osc.stop(at + dur + 0.02);
}

function startSiren() {
  stopSiren();
  let rounds = 0;
  const round = () => {
    rounds += 1;
    if (navigator.vibrate) navigator.vibrate([700, 300, 700, 300, 700]);
    if (audio && audio.state === 'running') {
      const now = audio.currentTime;
      beep(880, now, 0.28);
      beep(660, now + 0.32, 0.28);
      beep(880, now + 0.64, 0.28);
    }
    if (rounds >= 20) stopSiren();
  };
  round();
  beepTimer = setInterval(round, 3000);
}

function stopSiren() {
  clearInterval(beepTimer);
  beepTimer = null;
  if (navigator.vibrate) navigator.vibrate(0);
}

// ---------------------------------------------------------------- alerts

function entry(id) {
  return state.entries.get(id);
}

function isOpen(e) {
  return e && e.alert.status === 'active' && e.alert.expires_at > Date.now();
}

function onAlertEvent(msg) {
  const a = msg.alert;
  if (!a?.id) return;
  const replay = state.replayUpto > 0 && typeof msg.seq === 'number' && msg.seq <= state.replayUpto;
  let e = entry(a.id);
  if (e && e.alert.version >= a.version) return; // seen it already
  const isNew = !e;
  if (!e) {
    e = { alert: a, my: 'pending', assignment: null, cell_state: null };
    state.entries.set(a.id, e);
  }
  e.alert = a;
  if (a.status === 'active') {
    if (e.my === 'pending') sendAck(a.id, 'received');
    if (replay) state.missed.push(a.id);
    else if (isNew) raiseAlarm(a.id);
    else {
      toast(t('alert_updated', { title: a.title }));
      announce(t('alert_updated', { title: a.title }));
    }
    if (!isOpen(entry(state.current)) || isNew) state.current = a.id;
  } else {
    e.assignment = null;
    if (state.alarmFor === a.id) closeAlarm();
    if (replay) state.missed.push(a.id);
    else if (!isNew) {
      toast(t('alert_closed_' + a.status, { title: a.title }));
      announce(t('alert_closed_' + a.status, { title: a.title }), { assertive: true });
    }
    if (!state.current) state.current = a.id;
  }
  if (replay) scheduleMissed();
  saveLocal();
  renderAll();
}

const scheduleMissed = debounce(showMissed, 400);

/** After a reconnect: what arrived while offline, shown once. */
function showMissed() {
  const ids = [...new Set(state.missed)];
  state.missed = [];
  if (!ids.length) return;
  const list = $('#missed-list');
  list.replaceChildren(
    ...ids.map((id) => {
      const e = entry(id);
      if (!e) return null;
      return el('li', {},
        el('span', { class: `state state-${e.alert.status}` }, t('status_' + e.alert.status)), ' ',
        el('strong', {}, e.alert.title), ' ',
        el('span', { class: 'hint' }, fmtTime(e.alert.issued_at)),
      );
    }),
  );
  $('#missed').hidden = false;
  announce(t('missed_n', { n: ids.length }), { assertive: true });
  const open = ids.map(entry).filter((e) => isOpen(e) && RANK[e.my] < 2).sort((a, b) => b.alert.issued_at - a.alert.issued_at);
  if (open.length) raiseAlarm(open[0].alert.id);
}

function raiseAlarm(id) {
  const e = entry(id);
  if (!isOpen(e)) return;
  state.alarmFor = id;
  state.current = id;
  const a = e.alert;
  $('#alarm-kind').textContent = t('kind_' + a.kind) === 'kind_' + a.kind ? a.kind : t('kind_' + a.kind);
  $('#alarm-title').textContent = a.title;
  $('#alarm-body').textContent = a.body || '';
  $('#alarm-where').textContent = whereText(a);
  const box = $('#alarm');
  box.hidden = false;
  document.body.style.overflow = 'hidden';
  fitAlert(a);
  $('#alarm-accept').focus();
  startSiren();
  announce(t('alarm_announce', { title: a.title }), { assertive: true });
}

function closeAlarm() {
  state.alarmFor = null;
  $('#alarm').hidden = true;
  document.body.style.overflow = '';
  stopSiren();
}

function whereText(a) {
  const centre = a.center;
  if (!state.pos) return t('where_radius', { r: fmtDistance(a.radius_m) });
  const d = distanceM(state.pos, centre);
  if (d <= a.radius_m) return t('where_inside', { d: fmtDistance(d), dir: t(compassKey(bearingDeg(state.pos, centre))), r: fmtDistance(a.radius_m) });
  return t('where_away', { d: fmtDistance(d), dir: t(compassKey(bearingDeg(state.pos, centre))) });
}

function sendAck(id, st) {
  const e = entry(id);
  if (!e) return;
  // A late delivery receipt never undoes a decision.
  if (st !== 'received' || e.my === 'pending') e.my = st;
  const key = `ack:${id}`;
  const queued = state.pending.get(key);
  if (!(st === 'received' && queued && queued.state !== 'received')) {
    state.pending.set(key, { type: 'ack', alert: id, state: st });
  }
  saveLocal();
  renderAll();
  flush();
}

function sendCell(id, st) {
  const e = entry(id);
  if (!e?.assignment) return;
  e.cell_state = st;
  state.pending.set(`cell:${id}`, { type: 'cell', alert: id, cell: e.assignment.cell, state: st });
  saveLocal();
  renderCurrent();
  flush();
}

let flushing = false;

/** Sends queued acks and cell reports until the hub has them (durable). */
async function flush() {
  if (flushing || !state.socket?.open) return;
  flushing = true;
  try {
    for (const [key, msg] of [...state.pending.entries()]) {
      try {
        await state.socket.request(msg);
        if (state.pending.get(key) === msg) state.pending.delete(key);
      } catch (e) {
        if (e.code === 'offline' || e.code === 'timeout') break;
        state.pending.delete(key);
        toast(t('err_report', { reason: e.message }), 'error');
      }
    }
  } finally {
    flushing = false;
    saveLocal();
  }
}

function onAssignment(msg) {
  const e = entry(msg.alert);
  if (!e || !Array.isArray(msg.boundary)) return;
  const boundary = msg.boundary.filter((p) => Array.isArray(p) && p.length >= 2);
  e.assignment = {
    cell: msg.cell,
    boundary,
    center: msg.center || ringCentre(boundary),
    priority: msg.priority,
    weight: msg.weight,
  };
  e.cell_state = 'assigned';
  state.current = msg.alert;
  saveLocal();
  renderAll();
  if (navigator.vibrate) navigator.vibrate([300, 150, 300]);
  toast(t('assignment_new', { p: msg.priority ?? '?' }), 'ok');
  announce(t('assignment_new', { p: msg.priority ?? '?' }), { assertive: true });
  if (state.map && boundary.length) state.map.fitBounds(boundary, { maxZoom: 16, padding: [30, 30] });
}

function onRevoked(msg) {
  const e = entry(msg.alert);
  if (!e?.assignment || (msg.cell && msg.cell !== e.assignment.cell)) return;
  e.assignment = null;
  e.cell_state = null;
  saveLocal();
  renderAll();
  toast(t('assignment_revoked'));
  announce(t('assignment_revoked'));
}

// ---------------------------------------------------------------- render

function renderAll() {
  renderCurrent();
  renderList();
  drawLayers();
}

function renderCurrent() {
  const e = entry(state.current);
  const box = $('#current');
  if (!e) {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  const a = e.alert;
  const st = $('#current-status');
  st.className = `state state-${a.status}`;
  st.textContent = t('status_' + a.status);
  $('#current-time').textContent = fmtTime(a.issued_at);
  $('#current-h').textContent = a.title;
  $('#current-body').textContent = a.body || '';
  $('#current-where').textContent = whereText(a);
  const my = $('#my-state');
  my.className = `state state-${e.my}`;
  my.textContent = t('ack_' + e.my);
  const open = isOpen(e);
  $('#btn-accept').hidden = !open || e.my === 'accepted' || e.my === 'arrived';
  $('#btn-decline').hidden = !open || e.my === 'declined' || e.my === 'arrived';
  $('#btn-arrived').hidden = !open || e.my !== 'accepted';
  $('#btn-accept').textContent = t(e.my === 'declined' ? 'accept_after_all' : 'accept');
  $('#answer-actions').hidden = !open || e.my === 'arrived';

  const asg = e.assignment;
  $('#assignment').hidden = !(open && asg);
  $('#no-assignment').hidden = !(open && !asg && (e.my === 'accepted' || e.my === 'arrived'));
  if (open && asg) {
    $('#assignment-info').textContent = t('assignment_info', { p: asg.priority ?? '?', w: Number.isFinite(asg.weight) ? (asg.weight * 100).toFixed(1) : '?' });
    if (state.pos) {
      const d = distanceM(state.pos, asg.center);
      $('#route-hint').textContent = d < 60 ? t('route_here') : t('route_hint', { d: fmtDistance(d), dir: t(compassKey(bearingDeg(state.pos, asg.center))) });
    } else {
      $('#route-hint').textContent = t('route_no_position');
    }
    $('#route-link').href = `geo:${asg.center.lat.toFixed(6)},${asg.center.lng.toFixed(6)}?q=${asg.center.lat.toFixed(6)},${asg.center.lng.toFixed(6)}`;
    const cs = $('#cell-state');
    cs.className = `state state-${e.cell_state || 'assigned'}`;
    cs.textContent = t('cell_' + (e.cell_state || 'assigned'));
    $('#btn-searching').disabled = e.cell_state === 'searching' || e.cell_state === 'cleared' || e.cell_state === 'found';
    $('#btn-cleared').disabled = e.cell_state === 'cleared' || e.cell_state === 'found';
    $('#btn-found').disabled = e.cell_state === 'found';
  }
}

function renderList() {
  const items = [...state.entries.values()].sort((a, b) => b.alert.issued_at - a.alert.issued_at);
  $('#alert-list').replaceChildren(
    ...items.map((e) =>
      el('li', { class: 'alert-item' },
        el('button', { type: 'button', 'aria-current': e.alert.id === state.current ? 'true' : 'false', onclick: () => { state.current = e.alert.id; renderAll(); fitAlert(e.alert); $('#current-h').scrollIntoView({ block: 'nearest' }); } },
          el('span', { class: `state state-${e.alert.status}` }, t('status_' + e.alert.status)), ' ',
          el('strong', {}, e.alert.title),
          el('span', { class: 'meta' }, `${fmtTime(e.alert.issued_at)} · ${t('ack_' + e.my)}`),
        ),
      ),
    ),
  );
  $('#alert-list-empty').hidden = items.length > 0;
}

/** Shows the whole alert area (and where I am) on the map. */
function fitAlert(a) {
  if (!state.map) return;
  const L = window.L;
  const bounds = L.latLng(a.center.lat, a.center.lng).toBounds(a.radius_m * 2);
  if (state.pos) bounds.extend([state.pos.lat, state.pos.lng]);
  state.map.fitBounds(bounds, { padding: [16, 16] });
}

function drawMe() {
  if (!state.map || !state.pos) return;
  const L = window.L;
  const p = [state.pos.lat, state.pos.lng];
  if (!state.layers.me) {
    state.layers.me = L.circleMarker(p, { radius: 9, color: '#ffffff', weight: 3, fillColor: '#0b4f8a', fillOpacity: 1, interactive: false }).addTo(state.map);
    state.map.setView(p, Math.max(state.map.getZoom(), 15));
  } else state.layers.me.setLatLng(p);
  drawLayers();
}

function drawLayers() {
  const map = state.map;
  if (!map) return;
  const L = window.L;
  const e = entry(state.current);
  for (const k of ['alert', 'cell', 'route']) {
    if (state.layers[k]) state.layers[k].remove();
    state.layers[k] = null;
  }
  if (!e) return;
  const a = e.alert;
  state.layers.alert = L.circle([a.center.lat, a.center.lng], {
    radius: a.radius_m,
    color: isOpen(e) ? '#a4161a' : '#4a5360',
    weight: 2,
    dashArray: isOpen(e) ? null : '6 6',
    fillOpacity: 0.06,
    interactive: false,
  }).addTo(map);
  const asg = isOpen(e) ? e.assignment : null;
  if (asg && asg.boundary.length) {
    state.layers.cell = L.polygon(asg.boundary, { color: '#7a4b00', weight: 3, fillColor: '#ffb000', fillOpacity: 0.35, interactive: false }).addTo(map);
    if (state.pos) {
      state.layers.route = L.polyline([[state.pos.lat, state.pos.lng], [asg.center.lat, asg.center.lng]], { color: '#0b4f8a', weight: 3, dashArray: '8 8', interactive: false }).addTo(map);
    }
  }
}

// ---------------------------------------------------------------- push

async function setupPush(registration) {
  let mod = null;
  try {
    mod = await import('/push.js');
  } catch {
    mod = null;
  }
  const api = window.woodpeckerPush || {};
  const register = mod?.registerPush || mod?.register || api.registerPush || api.register || (typeof mod?.default === 'function' ? mod.default : null);
  if (typeof register !== 'function' || !('Notification' in window)) return;
  const run = async () => {
    try {
      await register({ token: state.token, registration });
      $('#push-enable').hidden = true;
      toast(t('push_on'), 'ok');
    } catch (e) {
      toast(t('push_failed', { reason: e?.message || String(e) }), 'error');
    }
  };
  if (Notification.permission === 'granted') {
    try {
      await register({ token: state.token, registration });
    } catch {
      /* the button below lets the user try again */
      $('#push-enable').hidden = false;
    }
  } else if (Notification.permission === 'default') {
    const btn = $('#push-enable');
    btn.hidden = false;
    btn.addEventListener('click', run, { once: true });
  }
}

// ---------------------------------------------------------------- wiring

function wire() {
  document.addEventListener('pointerdown', unlockAudio, { capture: true });
  document.addEventListener('keydown', unlockAudio, { capture: true });
  $('#duty').addEventListener('click', () => {
    unlockAudio();
    setDuty(!state.duty);
    announce(t(state.duty ? 'duty_on' : 'duty_off'));
  });
  $('#pick-location').addEventListener('click', () => {
    state.picking = !state.picking;
    if (state.picking) {
      stopLocation();
      toast(t('pick_location_hint'));
    } else if (state.duty && !state.pos?.manual) startLocation();
    renderLocation();
  });
  $('#alarm-accept').addEventListener('click', () => {
    const id = state.alarmFor;
    closeAlarm();
    sendAck(id, 'accepted');
    announce(t('you_accepted'));
    $('#current-h').focus();
  });
  $('#alarm-decline').addEventListener('click', () => {
    const id = state.alarmFor;
    closeAlarm();
    sendAck(id, 'declined');
  });
  $('#alarm-later').addEventListener('click', () => {
    closeAlarm();
    $('#btn-accept').focus();
  });
  $('#alarm').addEventListener('keydown', (ev) => {
    if (ev.key === 'Escape') {
      closeAlarm();
      $('#btn-accept').focus();
      return;
    }
    if (ev.key !== 'Tab') return;
    const f = [$('#alarm-accept'), $('#alarm-decline'), $('#alarm-later')];
    const i = f.indexOf(document.activeElement);
    ev.preventDefault();
    f[(i + (ev.shiftKey ? f.length - 1 : 1)) % f.length].focus();
  });
  $('#btn-accept').addEventListener('click', () => sendAck(state.current, 'accepted'));
  $('#btn-decline').addEventListener('click', () => sendAck(state.current, 'declined'));
  $('#btn-arrived').addEventListener('click', () => sendAck(state.current, 'arrived'));
  $('#btn-searching').addEventListener('click', () => sendCell(state.current, 'searching'));
  $('#btn-cleared').addEventListener('click', () => sendCell(state.current, 'cleared'));
  $('#btn-found').addEventListener('click', () => {
    $('#found-confirm').hidden = false;
    $('#btn-found-yes').focus();
  });
  $('#btn-found-yes').addEventListener('click', () => {
    $('#found-confirm').hidden = true;
    sendCell(state.current, 'found');
  });
  $('#btn-found-no').addEventListener('click', () => {
    $('#found-confirm').hidden = true;
    $('#btn-found').focus();
  });
  $('#missed-dismiss').addEventListener('click', () => {
    $('#missed').hidden = true;
  });
  $('#signout').addEventListener('click', () => {
    setDuty(false);
    forgetToken('responder');
    location.reload();
  });
  setInterval(() => {
    maybeSendLocation(false);
    renderCurrent();
  }, 30000);
  onLangChange(() => {
    $('#duty-label').textContent = t(state.duty ? 'duty_on' : 'duty_off');
    renderLocation();
    renderAll();
  });
}

async function main() {
  const { token, me } = await signIn('responder', ['responder'], { remember: true });
  state.token = token;
  state.me = me;
  const prefix = `wp.r.${me.sub}`;
  state.keys = { alerts: `${prefix}.alerts`, pending: `${prefix}.pending`, seq: `${prefix}.seq`, duty: `${prefix}.duty` };
  loadLocal();
  $('#app').hidden = false;
  $('#who').textContent = `${me.name || me.sub} · ${t('unit_' + me.unit)}`;
  wire();

  const cfg = await loadConfig();
  state.map = makeMap($('#map'), cfg, { label: 'map_label' });
  if (state.map) {
    state.map.on('click', (ev) => {
      if (!state.picking && !(state.locError && !state.pos)) return;
      state.pos = { lat: ev.latlng.lat, lng: ev.latlng.lng, acc: 30, manual: true };
      state.picking = false;
      drawMe();
      maybeSendLocation(true);
      renderLocation();
      renderCurrent();
    });
  }

  state.socket = new HubSocket({
    token,
    seqKey: state.keys.seq,
    initialSeq: 0,
    onEvent: (kind, data, extra) => {
      if (kind === 'status') showConnection(data);
      else if (kind === 'retry') showConnection('offline', data);
      else if (kind === 'unauthorized') {
        forgetToken('responder');
        toast(t('session_ended'), 'error');
      } else if (kind === 'welcome') {
        state.replayUpto = extra?.resumed ? data.seq : 0;
        maybeSendLocation(true);
        flush();
      } else if (kind === 'message') onMessage(data);
    },
  });
  state.socket.start();
  // For tests and field debugging: the page's state, read-only by convention.
  window.woodpeckerResponder = state;

  setDuty(storage.get(state.keys.duty) === '1');
  const open = [...state.entries.values()].filter(isOpen).sort((a, b) => b.alert.issued_at - a.alert.issued_at);
  state.current = open[0]?.alert.id || [...state.entries.keys()][0] || null;
  renderLocation();
  renderAll();

  // A notification tap opens /responder.html?alert=ID.
  const wanted = new URLSearchParams(location.search).get('alert');
  if (wanted && state.entries.has(wanted)) {
    state.current = wanted;
    renderAll();
  }

  const reg = await registerServiceWorker();
  if ('serviceWorker' in navigator) {
    navigator.serviceWorker.addEventListener('message', (ev) => onWorkerMessage(ev.data, reg));
  }
  setupPush(reg);
}

/** What the service worker tells an open page (see web/sw.js). */
function onWorkerMessage(data, registration) {
  if (!data || typeof data !== 'object') return;
  if (data.type === 'woodpecker.push') {
    // The socket may have dropped silently: make sure it is up; the event
    // itself arrives over it (replayed with since_seq if need be).
    state.socket?.reconnectNow();
  } else if (data.type === 'woodpecker.open_alert' && data.alert) {
    if (state.entries.has(data.alert)) {
      state.current = data.alert;
      renderAll();
      const e = entry(data.alert);
      if (isOpen(e) && RANK[e.my] < 2) raiseAlarm(data.alert);
    }
    state.socket?.reconnectNow();
  } else if (data.type === 'woodpecker.resubscribe') {
    setupPush(registration);
  }
}

function onMessage(msg) {
  switch (msg.type) {
    case 'alert':
    case 'alert_update':
      onAlertEvent(msg);
      break;
    case 'assignment':
      onAssignment(msg);
      break;
    case 'revoked':
    case 'assignment_revoked':
    case 'unassigned':
      onRevoked(msg);
      break;
    case 'error':
      if (msg.message) toast(msg.message, 'error');
      break;
    default:
      break;
  }
}

main();
