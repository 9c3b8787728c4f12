// Woodpecker service worker: owns Web Push on the responder's device.
// It shows each pushed alert as a notification (title, body; vibration and
// stay-on-screen for urgent ones; one notification per alert, replaced by
// its updates, cancellation or resolution), opens the responder page at the
// alert when the notification is tapped, and tells open pages what arrived.
//
// Payload (JSON, encrypted by the hub, at most 3993 bytes):
//   {v, type: "alert"|"alert_update", alert, status, version, title, body,
//    url, urgent, tag, ts}
// Messages posted to open pages:
//   {type: "woodpecker.push", payload}        a push arrived
//   {type: "woodpecker.open_alert", alert, url} the user tapped a notification
//   {type: "woodpecker.resubscribe"}          the browser rotated the subscription

'use strict';

const URGENT_VIBRATION = [500, 200, 500, 200, 1000];
const DEFAULT_URL = '/responder.html';

self.addEventListener('install', () => {
  self.skipWaiting();
});

self.addEventListener('activate', (event) => {
  event.waitUntil(self.clients.claim());
});

function parsePayload(data) {
  if (!data) return {};
  try {
    const value = data.json();
    return value && typeof value === 'object' ? value : {};
  } catch {
    try {
      return { body: data.text() };
    } catch {
      return {};
    }
  }
}

function sameOriginUrl(raw) {
  try {
    const url = new URL(raw || DEFAULT_URL, self.location.origin);
    return url.origin === self.location.origin ? url : new URL(DEFAULT_URL, self.location.origin);
  } catch {
    return new URL(DEFAULT_URL, self.location.origin);
  }
}

async function windows() {
  return self.clients.matchAll({ type: 'window', includeUncontrolled: true });
}

self.addEventListener('push', (event) => {
  const p = parsePayload(event.data);
  const urgent = p.urgent === true;
  const closed = p.status && p.status !== 'active';
  const title = typeof p.title === 'string' && p.title ? p.title : 'Woodpecker alert';
  const options = {
    body: typeof p.body === 'string' ? p.body : '',
    tag: p.tag || p.alert || 'woodpecker',
    // An update to the same alert replaces the notification and alerts again;
    // a stand-down replaces it quietly.
    renotify: !closed,
    silent: false,
    requireInteraction: urgent,
    icon: '/icons/icon.svg',
    badge: '/icons/icon-maskable.svg',
    timestamp: typeof p.ts === 'number' ? p.ts : Date.now(),
    data: { url: sameOriginUrl(p.url).href, alert: p.alert || null, status: p.status || null },
  };
  if (urgent) options.vibrate = URGENT_VIBRATION;
  event.waitUntil(
    (async () => {
      for (const client of await windows()) {
        client.postMessage({ type: 'woodpecker.push', payload: p });
      }
      await self.registration.showNotification(title, options);
    })(),
  );
});

self.addEventListener('notificationclick', (event) => {
  event.notification.close();
  const data = event.notification.data || {};
  const target = sameOriginUrl(data.url);
  event.waitUntil(
    (async () => {
      const all = await windows();
      // Prefer a responder page that is already open: focus it and let it
      // switch to the alert (it keeps its WebSocket session).
      const page =
        all.find((c) => new URL(c.url).pathname === target.pathname) ||
        all.find((c) => new URL(c.url).origin === target.origin);
      if (page) {
        try {
          const focused = await page.focus();
          if (new URL(focused.url).pathname === target.pathname) {
            focused.postMessage({ type: 'woodpecker.open_alert', alert: data.alert, url: target.href });
            return;
          }
          if ('navigate' in focused) {
            await focused.navigate(target.href);
            return;
          }
        } catch {
          /* fall through to a new window */
        }
      }
      await self.clients.openWindow(target.href);
    })(),
  );
});

// The browser replaced the subscription (keys or endpoint changed). The
// service worker holds no token, so it asks open pages to post the new one;
// a page that opens later re-posts it on load (push.js registerPush).
self.addEventListener('pushsubscriptionchange', (event) => {
  event.waitUntil(
    (async () => {
      for (const client of await windows()) {
        client.postMessage({ type: 'woodpecker.resubscribe' });
      }
    })(),
  );
});
