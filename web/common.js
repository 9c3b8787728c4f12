// Shared by the three pages: sign-in (token from the URL fragment, a paste
// box or a demo button, kept in sessionStorage), the HTTP API helper, the
// WebSocket client (hello, reconnect with backoff and since_seq, request ids),
// the i18n helper, small DOM helpers and the map set-up (Leaflet, loaded as a
// classic script before the page modules; the pages still work without it).
//
// No build step: plain ES modules served as they are by the hub.

// ---------------------------------------------------------------- i18n

const LANGS = ['zh-CN', 'en'];
let strings = { en: {}, 'zh-CN': {} };
let lang = 'zh-CN';
const langListeners = [];

/** Picks the language: ?lang=, then the stored choice, then the browser's,
 *  then Simplified Chinese (the first users work in Chinese). */
export function initI18n(pageStrings) {
  strings = pageStrings;
  const fromUrl = new URLSearchParams(location.search).get('lang');
  const stored = safeGet(localStorage, 'wp.lang');
  const browser = (navigator.languages || [navigator.language || ''])
    .map((l) => (l.toLowerCase().startsWith('zh') ? 'zh-CN' : l.toLowerCase().startsWith('en') ? 'en' : null))
    .find(Boolean);
  lang = [fromUrl, stored, browser].find((l) => LANGS.includes(l)) || 'zh-CN';
  applyI18n();
}

export function currentLang() {
  return lang;
}

export function setLang(next) {
  if (!LANGS.includes(next)) return;
  lang = next;
  safeSet(localStorage, 'wp.lang', next);
  applyI18n();
  for (const fn of langListeners) fn(lang);
}

export function onLangChange(fn) {
  langListeners.push(fn);
}

/** Looks a key up in the current language (falling back to English) and
 *  fills {placeholders}. */
export function t(key, params = {}) {
  const table = strings[lang] || {};
  let s = table[key] ?? strings.en?.[key] ?? key;
  if (typeof s === 'function') return s(params);
  return s.replace(/\{(\w+)\}/g, (_, k) => (params[k] ?? `{${k}}`));
}

/** Fills every [data-i18n] element's text and [data-i18n-attr] attributes
 *  ("placeholder:key;aria-label:key"). */
export function applyI18n(root = document) {
  document.documentElement.lang = lang;
  for (const node of root.querySelectorAll('[data-i18n]')) {
    node.textContent = t(node.dataset.i18n);
  }
  for (const node of root.querySelectorAll('[data-i18n-attr]')) {
    for (const pair of node.dataset.i18nAttr.split(';')) {
      const [attr, key] = pair.split(':').map((s) => s.trim());
      if (attr && key) node.setAttribute(attr, t(key));
    }
  }
  const title = document.querySelector('title[data-i18n]');
  if (title) document.title = title.textContent;
  for (const sel of root.querySelectorAll('select.lang-switch')) sel.value = lang;
}

/** Wires every select.lang-switch on the page. */
export function wireLangSwitch() {
  for (const sel of document.querySelectorAll('select.lang-switch')) {
    sel.value = lang;
    sel.addEventListener('change', () => setLang(sel.value));
  }
}

// ---------------------------------------------------------------- storage

function safeGet(store, key) {
  try {
    return store.getItem(key);
  } catch {
    return null;
  }
}

function safeSet(store, key, value) {
  try {
    if (value === null || value === undefined) store.removeItem(key);
    else store.setItem(key, value);
  } catch {
    /* private mode or storage disabled: keep going without it */
  }
}

export const storage = {
  get: (key) => safeGet(localStorage, key),
  set: (key, value) => safeSet(localStorage, key, value),
  getSession: (key) => safeGet(sessionStorage, key),
  setSession: (key, value) => safeSet(sessionStorage, key, value),
};

// ---------------------------------------------------------------- tokens

/** Reads a JWT's claims without verifying it (the hub verifies). */
export function claimsOf(token) {
  try {
    const part = token.split('.')[1];
    const json = atob(part.replace(/-/g, '+').replace(/_/g, '/'));
    const bytes = Uint8Array.from(json, (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return null;
  }
}

export function tokenExpired(token) {
  const c = claimsOf(token);
  return !c || typeof c.exp !== 'number' || c.exp * 1000 < Date.now();
}

/** The page's token: from `#token=` (then removed from the address bar),
 *  else sessionStorage (and, where `remember` allows, localStorage). */
export function takeToken(page, { remember = false } = {}) {
  const key = `wp.token.${page}`;
  const hash = new URLSearchParams(location.hash.replace(/^#/, ''));
  const fromHash = hash.get('token');
  if (fromHash) {
    hash.delete('token');
    const rest = hash.toString();
    history.replaceState(null, '', location.pathname + location.search + (rest ? `#${rest}` : ''));
    storage.setSession(key, fromHash);
    return fromHash;
  }
  let token = storage.getSession(key);
  if (!token && remember) token = storage.get(key);
  if (token && tokenExpired(token)) {
    storage.setSession(key, null);
    storage.set(key, null);
    return null;
  }
  return token;
}

export function saveToken(page, token, { remember = false } = {}) {
  const key = `wp.token.${page}`;
  storage.setSession(key, token);
  storage.set(key, remember ? token : null);
}

export function forgetToken(page) {
  const key = `wp.token.${page}`;
  storage.setSession(key, null);
  storage.set(key, null);
}

/** Demo users, when the hub runs as `woodpecker demo` (absent otherwise). */
export async function demoUsers(role) {
  try {
    const res = await fetch('/demo-users.json', { cache: 'no-store' });
    if (!res.ok) return [];
    const body = await res.json();
    return (body.users || []).filter((u) => u.role === role && u.token && !tokenExpired(u.token));
  } catch {
    return [];
  }
}

// ---------------------------------------------------------------- HTTP

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Calls the hub's HTTP API with the bearer token; throws ApiError. */
export async function api(token, path, { method = 'GET', body, signal } = {}) {
  let res;
  try {
    res = await fetch(`/api/v1${path}`, {
      method,
      signal,
      headers: {
        Authorization: `Bearer ${token}`,
        ...(body !== undefined ? { 'Content-Type': 'application/json' } : {}),
      },
      body: body !== undefined ? JSON.stringify(body) : undefined,
    });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'network', e.message || 'network error');
  }
  let data = null;
  const text = await res.text();
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!res.ok) {
    const err = data?.error || {};
    throw new ApiError(res.status, err.code || 'http_' + res.status, err.message || res.statusText);
  }
  return data;
}

// ---------------------------------------------------------------- WebSocket

/**
 * The hub's WebSocket session. Sends `hello` with the token (and `since_seq`
 * after a drop), reconnects with exponential backoff and jitter, keeps the
 * highest `seq` seen, sends an application ping when quiet and closes a
 * connection that stops answering. Emits:
 *   status(state)   'connecting' | 'open' | 'offline' | 'unauthorized'
 *   welcome(msg, {resumed, sinceSeq})
 *   message(msg)    every server frame after welcome
 */
export class HubSocket {
  constructor({ token, seqKey = null, initialSeq = null, onEvent = () => {} }) {
    this.token = token;
    this.seqKey = seqKey;
    this.onEvent = onEvent;
    const raw = seqKey ? storage.get(seqKey) : null;
    const stored = raw === null ? NaN : Number(raw);
    // A client that keeps its position resumes from it; `initialSeq` (0 for
    // a responder) asks a first session for everything that concerns it.
    this.seq = Number.isFinite(stored) && stored >= 0 ? stored : initialSeq;
    this.ws = null;
    this.attempt = 0;
    this.nextId = 1;
    this.pending = new Map();
    this.stopped = false;
    this.everConnected = false;
    this.timer = null;
    this.pingTimer = null;
    this.lastHeard = 0;
    this.state = 'offline';
    window.addEventListener('online', () => this.reconnectNow());
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible') this.reconnectNow();
    });
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    clearInterval(this.pingTimer);
    if (this.ws) this.ws.close(1000, 'bye');
    this.ws = null;
  }

  setStatus(state) {
    this.state = state;
    this.onEvent('status', state);
  }

  reconnectNow() {
    if (this.stopped || this.state === 'unauthorized') return;
    if (this.ws && this.ws.readyState <= 1) return;
    clearTimeout(this.timer);
    this.attempt = 0;
    this.connect();
  }

  connect() {
    clearTimeout(this.timer);
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    let ws;
    try {
      ws = new WebSocket(`${proto}//${location.host}/ws`, ['woodpecker.v1']);
    } catch {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    this.welcomed = false;
    this.setStatus('connecting');
    ws.onopen = () => {
      const hello = { type: 'hello', token: this.token };
      if (this.seq !== null) hello.since_seq = this.seq;
      this.sinceSent = this.seq;
      ws.send(JSON.stringify(hello));
    };
    ws.onmessage = (ev) => {
      this.lastHeard = Date.now();
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      this.handle(msg);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      clearInterval(this.pingTimer);
      for (const [, p] of this.pending) p.reject(new ApiError(0, 'offline', 'connection lost'));
      this.pending.clear();
      if (ev.code === 4001 || ev.code === 4003) {
        this.setStatus('unauthorized');
        this.onEvent('unauthorized', ev.reason || '');
        return;
      }
      if (this.stopped) return;
      this.setStatus('offline');
      this.scheduleReconnect();
    };
    ws.onerror = () => {
      /* onclose follows */
    };
  }

  scheduleReconnect() {
    if (this.stopped) return;
    const base = Math.min(30000, 1000 * 2 ** Math.min(this.attempt, 5));
    const delay = base / 2 + Math.random() * (base / 2);
    this.attempt += 1;
    this.onEvent('retry', Math.round(delay / 1000));
    this.timer = setTimeout(() => this.connect(), delay);
  }

  handle(msg) {
    if (msg.type === 'welcome') {
      this.welcomed = true;
      const resumed = this.everConnected || this.sinceSent !== null;
      this.everConnected = true;
      this.welcomeSeq = msg.seq;
      // A fresh session starts from the hub's current position; a resumed
      // one keeps its own (the replay carries what it missed).
      if (this.seq === null) this.noteSeq(msg.seq);
      this.setStatus('open');
      clearTimeout(this.stableTimer);
      this.stableTimer = setTimeout(() => {
        this.attempt = 0;
      }, 10000);
      this.startPing(msg.heartbeat_s || 25);
      this.onEvent('welcome', msg, { resumed, sinceSeq: this.sinceSent });
      return;
    }
    if (typeof msg.seq === 'number' && msg.seq > 0) this.noteSeq(msg.seq);
    if ((msg.type === 'ok' || msg.type === 'error' || msg.type === 'pong') && msg.id !== undefined) {
      const p = this.pending.get(msg.id);
      if (p) {
        this.pending.delete(msg.id);
        clearTimeout(p.timer);
        if (msg.type === 'error') p.reject(new ApiError(0, msg.code, msg.message));
        else p.resolve(msg);
        return;
      }
    }
    this.onEvent('message', msg);
  }

  noteSeq(seq) {
    if (typeof seq !== 'number') return;
    if (this.seq === null || seq > this.seq) {
      this.seq = seq;
      if (this.seqKey) storage.set(this.seqKey, String(seq));
    }
  }

  startPing(heartbeatS) {
    clearInterval(this.pingTimer);
    const every = Math.max(5, heartbeatS - 5) * 1000;
    this.pingTimer = setInterval(() => {
      if (!this.ws || this.ws.readyState !== 1) return;
      if (Date.now() - this.lastHeard > every * 2 + 10000) {
        this.ws.close(4000, 'silent');
        return;
      }
      this.request({ type: 'ping' }).catch(() => {});
    }, every);
  }

  get open() {
    return !!this.ws && this.ws.readyState === 1 && this.welcomed;
  }

  /** Sends without waiting; false when not connected. */
  send(msg) {
    if (!this.open) return false;
    this.ws.send(JSON.stringify(msg));
    return true;
  }

  /** Sends with an id and resolves on the hub's `ok` (after it is durable). */
  request(msg, timeoutMs = 10000) {
    if (!this.open) return Promise.reject(new ApiError(0, 'offline', 'not connected'));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new ApiError(0, 'timeout', 'no reply'));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.ws.send(JSON.stringify({ ...msg, id }));
    });
  }
}

// ---------------------------------------------------------------- DOM

/** Creates an element: el('button', {class: 'x', onclick}, 'text', child). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else if (k.startsWith('on') && typeof v === 'function') node.addEventListener(k.slice(2), v);
    else if (v === true) node.setAttribute(k, '');
    else node.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

export const $ = (sel, root = document) => root.querySelector(sel);

/** Says something to screen readers (and shows it in the page's status line). */
export function announce(text, { assertive = false } = {}) {
  const region = document.getElementById(assertive ? 'announce-assertive' : 'announce');
  if (!region) return;
  region.textContent = '';
  setTimeout(() => {
    region.textContent = text;
  }, 30);
}

/** Shows a transient message in #toast. */
export function toast(text, kind = 'info') {
  const box = document.getElementById('toast');
  if (!box) return;
  const item = el('div', { class: `toast toast-${kind}`, role: kind === 'error' ? 'alert' : 'status' }, text);
  box.append(item);
  setTimeout(() => item.remove(), kind === 'error' ? 8000 : 4000);
}

export function fmtTime(ms) {
  if (!ms) return '';
  return new Date(ms).toLocaleTimeString(lang, { hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

export function fmtDateTime(ms) {
  if (!ms) return '';
  return new Date(ms).toLocaleString(lang, {
    month: '2-digit',
    day: '2-digit',
    hour: '2-digit',
    minute: '2-digit',
  });
}

export function fmtDistance(m) {
  if (!Number.isFinite(m)) return '';
  return m < 1000 ? `${Math.round(m)} m` : `${(m / 1000).toFixed(m < 10000 ? 1 : 0)} km`;
}

export function debounce(fn, ms) {
  let timer;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

/** Shows the connection state in the header's #conn element. */
export function showConnection(state, retryS) {
  const node = document.getElementById('conn');
  if (!node) return;
  node.dataset.state = state;
  const key = { open: 'conn_open', connecting: 'conn_connecting', offline: 'conn_offline', unauthorized: 'conn_unauthorized' }[state] || 'conn_offline';
  node.textContent = retryS ? t('conn_retry', { s: retryS }) : t(key);
}

// ---------------------------------------------------------------- sign-in

/**
 * Runs the sign-in panel (#signin): a paste box plus, in demo mode, one
 * button per demo user of `role`. Resolves with {token, me} once the hub
 * accepts a token of an allowed role.
 */
export async function signIn(page, roles, { remember = false } = {}) {
  const panel = document.getElementById('signin');
  const form = document.getElementById('signin-form');
  const input = document.getElementById('signin-token');
  const error = document.getElementById('signin-error');
  const demoBox = document.getElementById('signin-demo');
  const rememberBox = document.getElementById('signin-remember');

  const check = async (token) => {
    const me = await api(token, '/me');
    if (!roles.includes(me.role)) throw new ApiError(403, 'forbidden', t('signin_wrong_role', { role: me.role }));
    return me;
  };

  let token = takeToken(page, { remember });
  if (token) {
    try {
      const me = await check(token);
      panel.hidden = true;
      return { token, me };
    } catch (e) {
      if (e.status === 0) {
        // Offline at start: trust the stored token's claims and go on; the
        // socket keeps retrying.
        const c = claimsOf(token);
        if (c && roles.includes(c.role)) {
          panel.hidden = true;
          return { token, me: { sub: c.sub, role: c.role, unit: c.unit, name: c.name || '' } };
        }
      }
      forgetToken(page);
      error.textContent = t('signin_rejected', { reason: e.message });
    }
  }

  panel.hidden = false;
  const users = await demoUsers(roles[0]);
  demoBox.replaceChildren();
  if (users.length) {
    demoBox.append(el('p', { class: 'hint' }, t('signin_demo_hint')));
    for (const u of users) {
      demoBox.append(
        el('button', { type: 'button', class: 'btn btn-secondary demo-user', dataset: { token: u.token } }, t('signin_as', { name: u.label || u.sub })),
      );
    }
  }
  input.focus();
  return new Promise((resolve) => {
    const attempt = async (candidate) => {
      error.textContent = '';
      const tok = (candidate || '').trim().replace(/^Bearer\s+/i, '');
      if (!tok) {
        error.textContent = t('signin_empty');
        return;
      }
      try {
        const me = await check(tok);
        saveToken(page, tok, { remember: remember && rememberBox?.checked });
        panel.hidden = true;
        resolve({ token: tok, me });
      } catch (e) {
        error.textContent = t('signin_rejected', { reason: e.message });
      }
    };
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      attempt(input.value);
    });
    demoBox.addEventListener('click', (ev) => {
      const btn = ev.target.closest('button.demo-user');
      if (btn) attempt(btn.dataset.token);
    });
  });
}

// ---------------------------------------------------------------- map

const DEFAULT_CONFIG = {
  tile_url: 'https://tile.openstreetmap.org/{z}/{x}/{y}.png',
  tile_attribution: '&copy; OpenStreetMap contributors',
  tile_max_zoom: 19,
  center: { lat: 30.7522, lng: 120.7585 },
  zoom: 13,
};

/** web/config.json (operators edit it), over the defaults. */
export async function loadConfig() {
  try {
    const res = await fetch('/config.json', { cache: 'no-cache' });
    if (res.ok) return { ...DEFAULT_CONFIG, ...(await res.json()) };
  } catch {
    /* defaults */
  }
  return { ...DEFAULT_CONFIG };
}

export function hasMap() {
  return typeof window.L !== 'undefined';
}

/**
 * A Leaflet map in `container`, with the configured base tiles when a tile
 * URL is set. Tiles that fail to load leave a plain background: the hub's
 * layers draw regardless. Returns null (and shows a notice) without Leaflet.
 */
export function makeMap(container, cfg, { label } = {}) {
  if (!hasMap()) {
    container.classList.add('map-missing');
    container.replaceChildren(el('p', { class: 'notice' }, t('map_missing')));
    return null;
  }
  const L = window.L;
  const map = L.map(container, { zoomControl: true, keyboard: true, preferCanvas: false, attributionControl: true });
  map.setView([cfg.center.lat, cfg.center.lng], cfg.zoom);
  if (cfg.tile_url) {
    const tiles = L.tileLayer(cfg.tile_url, {
      maxZoom: cfg.tile_max_zoom || 19,
      attribution: cfg.tile_attribution || '',
      crossOrigin: true,
    });
    let failures = 0;
    tiles.on('tileerror', () => {
      failures += 1;
      if (failures === 4) container.classList.add('tiles-offline');
    });
    tiles.addTo(map);
  }
  if (label) container.setAttribute('aria-label', label);
  container.setAttribute('role', 'application');
  // Leaflet's zoom buttons: label them in the page language.
  const relabel = () => {
    const zin = container.querySelector('.leaflet-control-zoom-in');
    const zout = container.querySelector('.leaflet-control-zoom-out');
    if (zin) {
      zin.setAttribute('aria-label', t('map_zoom_in'));
      zin.title = t('map_zoom_in');
    }
    if (zout) {
      zout.setAttribute('aria-label', t('map_zoom_out'));
      zout.title = t('map_zoom_out');
    }
    if (label) container.setAttribute('aria-label', t(label));
  };
  relabel();
  onLangChange(relabel);
  return map;
}

/** Great-circle distance in metres. */
export function distanceM(a, b) {
  const R = 6371008.8;
  const rad = Math.PI / 180;
  const dLat = (b.lat - a.lat) * rad;
  const dLng = (b.lng - a.lng) * rad;
  const h = Math.sin(dLat / 2) ** 2 + Math.cos(a.lat * rad) * Math.cos(b.lat * rad) * Math.sin(dLng / 2) ** 2;
  return 2 * R * Math.asin(Math.min(1, Math.sqrt(h)));
}

/** Initial bearing from a to b in degrees (0 = north). */
export function bearingDeg(a, b) {
  const rad = Math.PI / 180;
  const y = Math.sin((b.lng - a.lng) * rad) * Math.cos(b.lat * rad);
  const x = Math.cos(a.lat * rad) * Math.sin(b.lat * rad) - Math.sin(a.lat * rad) * Math.cos(b.lat * rad) * Math.cos((b.lng - a.lng) * rad);
  return (Math.atan2(y, x) / rad + 360) % 360;
}

/** Compass point key (dir_n, dir_ne, ...) for a bearing. */
export function compassKey(deg) {
  const keys = ['dir_n', 'dir_ne', 'dir_e', 'dir_se', 'dir_s', 'dir_sw', 'dir_w', 'dir_nw'];
  return keys[Math.round(deg / 45) % 8];
}

/** The centroid of a [[lat,lng],...] ring (good enough for a hexagon). */
export function ringCentre(ring) {
  let lat = 0;
  let lng = 0;
  for (const [a, b] of ring) {
    lat += a;
    lng += b;
  }
  return { lat: lat / ring.length, lng: lng / ring.length };
}

/** A GeoJSON Polygon's outer ring as [[lat,lng],...]. */
export function polygonRing(geometry) {
  if (!geometry) return [];
  if (geometry.type === 'Polygon') return (geometry.coordinates[0] || []).map(([lng, lat]) => [lat, lng]);
  if (geometry.type === 'MultiPolygon') return (geometry.coordinates[0]?.[0] || []).map(([lng, lat]) => [lat, lng]);
  return [];
}

/** Registers the service worker when the browser has one and /sw.js exists. */
export async function registerServiceWorker() {
  if (!('serviceWorker' in navigator)) return null;
  try {
    return await navigator.serviceWorker.register('/sw.js', { scope: '/' });
  } catch {
    return null;
  }
}

/** Applies an `ack` message to `acks` (responder → latest state). A late
 *  delivery receipt never undoes a decision, as on the hub. Returns whether
 *  anything changed. */
export function applyAck(acks, msg) {
  const known = acks.get(msg.responder);
  if (known && msg.state === 'received' && known.state !== 'pending') return false;
  acks.set(msg.responder, { unit: msg.unit, state: msg.state, name: msg.name || known?.name || '', at: msg.at });
  return true;
}

/** Writes ack counters into the elements `#count-<name>`. */
export function showCounters(counts, names) {
  for (const k of names) {
    const node = document.getElementById(`count-${k}`);
    if (node) node.textContent = counts[k] ?? 0;
  }
}
