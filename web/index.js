// The start page: links to the three pages and, in demo mode, one sign-in
// link per demo user.
import strings from './i18n/index.js';
import { initI18n, wireLangSwitch, onLangChange, t, el, $ } from './common.js';

initI18n(strings);
wireLangSwitch();

const PAGES = { police: '/police.html', coordinator: '/coordinator.html', responder: '/responder.html' };

async function showDemo() {
  let users = [];
  try {
    const res = await fetch('/demo-users.json', { cache: 'no-store' });
    if (res.ok) users = (await res.json()).users || [];
  } catch {
    users = [];
  }
  if (!users.length) return;
  const render = () =>
    $('#demo-users').replaceChildren(
      ...users
        .filter((u) => PAGES[u.role])
        .map((u) => el('li', {}, el('a', { href: `${PAGES[u.role]}#token=${encodeURIComponent(u.token)}` }, t('open_as', { page: t(u.role), name: u.label || u.sub })))),
    );
  render();
  onLangChange(render);
  $('#demo').hidden = false;
}

showDemo();
