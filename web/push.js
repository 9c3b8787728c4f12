// Woodpecker Web Push, page side (an ES module; also sets window.woodpeckerPush).
// It registers /sw.js, subscribes the browser with the hub's VAPID public
// key and POSTs the subscription to the hub, so a responder without an open
// connection still gets alerts. Calling it again is cheap and idempotent:
// the hub deduplicates by endpoint, and a subscription made with another
// key (the hub's key changed) is replaced.
//
//   import { registerPush, unregisterPush, pushStatus } from '/push.js';
//   await registerPush({ token });            // call from a tap the first time
//   await registerPush({ token, registration });
//   await unregisterPush({ token });
//   await pushStatus();  // 'unsupported' | 'denied' | 'default' | 'subscribed' | 'unsubscribed'
//
// registerPush asks for notification permission when it is not yet granted
// (browsers want that inside a user gesture) and throws an Error whose
// message says what went wrong.

const API = '/api/v1/push';

export function pushSupported() {
  return (
    typeof window !== 'undefined' &&
    'serviceWorker' in navigator &&
    'PushManager' in window &&
    'Notification' in window
  );
}

function base64UrlToBytes(text) {
  const b64 = text.replace(/-/g, '+').replace(/_/g, '/');
  const padded = b64 + '='.repeat((4 - (b64.length % 4)) % 4);
  const raw = atob(padded);
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}

function sameBytes(a, b) {
  if (!a || !b) return false;
  const x = new Uint8Array(a);
  const y = new Uint8Array(b);
  if (x.length !== y.length) return false;
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}

async function failure(resp, what) {
  let detail = `${resp.status}`;
  try {
    const body = await resp.json();
    if (body && body.error) detail = `${body.error.code}: ${body.error.message}`;
  } catch {
    /* not JSON */
  }
  return new Error(`${what} failed (${detail})`);
}

async function serviceWorker(registration) {
  if (registration) return registration;
  const existing = await navigator.serviceWorker.getRegistration('/');
  if (existing) return existing;
  await navigator.serviceWorker.register('/sw.js', { scope: '/' });
  return navigator.serviceWorker.ready;
}

async function publicKey() {
  const resp = await fetch(`${API}/vapid-public-key`, { headers: { Accept: 'application/json' } });
  if (!resp.ok) throw await failure(resp, 'getting the push key');
  const body = await resp.json();
  if (!body || typeof body.public_key !== 'string') throw new Error('the hub sent no push key');
  return base64UrlToBytes(body.public_key);
}

/** Subscribes this browser and stores the subscription at the hub. */
export async function registerPush({ token, registration } = {}) {
  if (!pushSupported()) throw new Error('this browser does not support push notifications');
  if (!token) throw new Error('sign in first');
  let permission = Notification.permission;
  if (permission === 'default') permission = await Notification.requestPermission();
  if (permission !== 'granted') throw new Error('notifications are blocked for this site');

  const reg = await serviceWorker(registration);
  const key = await publicKey();
  let sub = await reg.pushManager.getSubscription();
  if (sub && !sameBytes(sub.options && sub.options.applicationServerKey, key)) {
    await sub.unsubscribe();
    sub = null;
  }
  if (!sub) {
    sub = await reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key });
  }
  const resp = await fetch(`${API}/subscriptions`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${token}` },
    body: JSON.stringify(sub.toJSON()),
  });
  if (!resp.ok) throw await failure(resp, 'storing the push subscription');
  const body = await resp.json();
  listen(token);
  return { id: body.id, endpoint: sub.endpoint };
}

/** Removes the subscription at the hub and in the browser. */
export async function unregisterPush({ token, registration } = {}) {
  if (!pushSupported()) return false;
  const reg = registration || (await navigator.serviceWorker.getRegistration('/'));
  const sub = reg && (await reg.pushManager.getSubscription());
  if (!sub) return false;
  if (token) {
    const resp = await fetch(`${API}/subscriptions`, {
      method: 'DELETE',
      headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${token}` },
      body: JSON.stringify({ endpoint: sub.endpoint }),
    });
    if (!resp.ok && resp.status !== 404) throw await failure(resp, 'removing the push subscription');
  }
  await sub.unsubscribe();
  return true;
}

/** Where this browser stands with push. */
export async function pushStatus() {
  if (!pushSupported()) return 'unsupported';
  if (Notification.permission !== 'granted') return Notification.permission;
  const reg = await navigator.serviceWorker.getRegistration('/');
  const sub = reg && (await reg.pushManager.getSubscription());
  return sub ? 'subscribed' : 'unsubscribed';
}

let listening = null;

// When the service worker reports a rotated subscription, post the new one.
function listen(token) {
  if (listening) {
    listening.token = token;
    return;
  }
  listening = { token };
  navigator.serviceWorker.addEventListener('message', (event) => {
    if (event.data && event.data.type === 'woodpecker.resubscribe' && listening.token) {
      registerPush({ token: listening.token }).catch(() => {});
    }
  });
}

export default registerPush;

if (typeof window !== 'undefined') {
  window.woodpeckerPush = { registerPush, unregisterPush, pushStatus, pushSupported };
}
