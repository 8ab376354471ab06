// The dashboard in a real browser: Debian's Chromium, headless, driven by playwright-core
// (which never downloads a browser of its own here). Started by
// crates/spillway-server/tests/ui.rs, which runs a real `spillway serve`, sends a burst that
// gets denied, and passes what it set up in the environment:
//
//   SPILLWAY_UI_URL        the page, e.g. http://127.0.0.1:4321/ui (the admin listener)
//   SPILLWAY_API_URL       the main listener, for sending more traffic
//   SPILLWAY_ADMIN_TOKEN   the admin token
//   SPILLWAY_TENANT        the tenant the burst exhausted (its `tenant-hourly` bucket holds 5, refilling 5/h)
//   SPILLWAY_EVIL_TENANT   a tenant whose name is markup, also denied
//   SPILLWAY_LOOKALIKE_TENANT SPILLWAY_TENANT with a zero-width no-break space after it, also denied
//   SPILLWAY_UI_SCREENSHOT optional: where to write a PNG of the page (docs/ui.png)
//   CHROMIUM               optional: the browser binary (default /usr/bin/chromium)
//
// Exits 0 when every check passed; otherwise prints what failed and exits 1.

import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (this script is run by tests/ui.rs)`);
  return value;
};
const UI = env('SPILLWAY_UI_URL');
const API = env('SPILLWAY_API_URL');
const TOKEN = env('SPILLWAY_ADMIN_TOKEN');
const TENANT = env('SPILLWAY_TENANT');
const EVIL = env('SPILLWAY_EVIL_TENANT');
const LOOKALIKE = env('SPILLWAY_LOOKALIKE_TENANT');
const SCREENSHOT = process.env.SPILLWAY_UI_SCREENSHOT;
const PATIENCE = 20000;
// The whole run's limit: past it the browser is closed and the script fails, whatever it was
// waiting for (tests/ui.rs kills the process a little later still).
const DEADLINE = 100000;

const step = (what) => console.log(`ui.test: ${what}`);

async function send(tenant, n) {
  const statuses = [];
  for (let i = 0; i < n; i++) {
    const response = await fetch(`${API}/v1/check`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ tenant }),
    });
    statuses.push(response.status);
  }
  return statuses;
}

// The numbers a table shows, by the text of its first column.
async function rows(page, tableId) {
  return page.$$eval(`#${tableId} tbody tr`, (trs) =>
    trs.map((tr) => Array.from(tr.children, (td) => td.textContent)));
}

async function deniedTotal(page) {
  const text = await page.textContent('#chart-totals [data-kind="denied"] b');
  return Number(text);
}

let closeBrowser = async () => {};

async function main() {
  const profile = mkdtempSync(join(tmpdir(), 'spillway-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
    viewport: { width: 1280, height: 800 },
    deviceScaleFactor: 1,
  });
  closeBrowser = () => context.close();
  const problems = [];
  try {
    const page = context.pages()[0] || (await context.newPage());
    page.setDefaultTimeout(PATIENCE);
    page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    // A poll still in flight when the test reloads the page is aborted by the browser, not
    // failed; any other abort still counts.
    let reloading = false;
    page.on('requestfailed', (r) => {
      const why = r.failure()?.errorText;
      if (reloading && why === 'net::ERR_ABORTED') return;
      problems.push(`request failed: ${r.url()} ${why}`);
    });
    page.on('dialog', (d) => { problems.push(`dialog opened: ${d.message()}`); d.dismiss(); });

    step('the page asks for the token, and keeps it out of the URL');
    await page.goto(UI);
    await page.waitForSelector('#login:not([hidden])');
    await page.fill('#token', TOKEN);
    await page.click('#login-form button[type=submit]');
    await page.waitForSelector('#main:not([hidden])');
    assert.ok(!page.url().includes(TOKEN), 'the token is not in the URL');
    assert.equal(await page.evaluate(() => sessionStorage.getItem('spillway-admin-token')), TOKEN);

    // The burst was sent before the browser started; on a loaded machine that can be more
    // than a minute ago, so the table looks at the last 10 minutes.
    await page.selectOption('#top-window', '10m');
    step('the denied tenant appears in the top-blocked table');
    await page.waitForFunction((t) => Array.from(document.querySelectorAll('#blocked-tenants tbody button'))
      .some((b) => b.textContent === t), TENANT);
    const blocked = await rows(page, 'blocked-tenants');
    const mine = blocked.find((r) => r[0] === TENANT);
    assert.ok(mine && Number(mine[1]) >= 5, `denials counted: ${JSON.stringify(blocked)}`);

    step('a tenant named with markup is shown as text, not run');
    const evilShown = blocked.find((r) => r[0] === EVIL);
    assert.ok(evilShown, `the markup-named tenant is listed as text: ${JSON.stringify(blocked)}`);
    assert.equal(await page.locator('#main img').count(), 0, 'no element was made from a name');
    assert.equal(await page.evaluate(() => window.__pwned), undefined);
    assert.ok(!(await page.title()).includes('pwned'));

    step('a name that would pass for another shows what does not show, and is marked');
    assert.equal(LOOKALIKE, TENANT + '\ufeff');
    const lookalikeShown = TENANT + '\\u{feff}';
    await page.waitForFunction((t) => Array.from(document.querySelectorAll('#blocked-tenants tbody button'))
      .some((b) => b.textContent === t), lookalikeShown);
    const marks = await page.$$eval('#blocked-tenants tbody button', (buttons) =>
      buttons.map((b) => [b.textContent, b.classList.contains('hidden-chars')]));
    assert.ok(marks.some(([text, marked]) => text === lookalikeShown && marked), JSON.stringify(marks));
    assert.ok(marks.some(([text, marked]) => text === TENANT && !marked), JSON.stringify(marks));
    assert.ok(!marks.some(([text]) => text === LOOKALIKE), 'never shown as it would look');
    // The lookup is asked for the name itself, and shows it the same way.
    await page.evaluate((t) => Array.from(document.querySelectorAll('#blocked-tenants tbody button'))
      .find((b) => b.textContent === t).click(), lookalikeShown);
    await page.waitForSelector('#lookup-result:not([hidden])');
    await page.waitForFunction((t) => {
      const shown = document.querySelector('#lookup-tenant');
      return shown?.textContent === t && shown.classList.contains('hidden-chars');
    }, lookalikeShown);
    assert.ok(page.url().includes(encodeURIComponent(LOOKALIKE)), `looked up as it is: ${page.url()}`);

    step('the markup-named tenant goes through the lookup as text too');
    await page.evaluate((t) => Array.from(document.querySelectorAll('#blocked-tenants tbody button'))
      .find((b) => b.textContent === t).click(), EVIL);
    await page.waitForSelector('#lookup-result:not([hidden])');
    await page.waitForFunction((t) => document.querySelector('#lookup-tenant')?.textContent === t, EVIL);
    await page.waitForFunction(() => document.querySelectorAll('#lookup-limits tbody tr').length > 0);
    assert.equal(await page.locator('#main img').count(), 0, 'no element was made from the looked-up name');
    assert.equal(await page.evaluate(() => window.__pwned), undefined);

    step('the store panel says how the store is doing');
    await page.waitForFunction(() => document.querySelector('#store-facts dd'));
    const store = await page.textContent('#store-facts');
    assert.match(store, /memory/);
    assert.match(store, /closed/);

    step('the lookup shows the limit at zero remaining, and the recent denials');
    await page.click(`#blocked-tenants tbody button:text-is("${TENANT}")`);
    await page.waitForSelector('#lookup-result:not([hidden])');
    await page.waitForFunction((t) => document.querySelector('#lookup-tenant')?.textContent === t, TENANT);
    const limits = await rows(page, 'lookup-limits');
    const minute = limits.find((r) => r[0] === 'tenant-hourly');
    assert.ok(minute, `tenant-hourly applies: ${JSON.stringify(limits)}`);
    assert.match(minute[3], /^0 \/ 5 left$/, `zero remaining: ${JSON.stringify(minute)}`);
    assert.equal(minute[5], 'denied');
    assert.ok(page.url().includes('#lookup?tenant='), 'the lookup can be linked');
    await page.waitForFunction(() => Array.from(document.querySelectorAll('#lookup-decisions tbody tr'))
      .some((tr) => tr.children[1]?.textContent === 'denied'));

    step('the chart moves when more requests are denied');
    await page.waitForFunction(() => Number(document.querySelector('#chart-totals [data-kind="denied"] b')?.textContent) > 0,
      null, { timeout: PATIENCE });
    const before = await deniedTotal(page);
    const statuses = await send(TENANT, 8);
    assert.ok(statuses.every((s) => s === 429), `the burst is denied: ${statuses}`);
    await page.waitForFunction((n) => Number(document.querySelector('#chart-totals [data-kind="denied"] b')?.textContent) >= n,
      before + 8, { timeout: PATIENCE });
    // The plotted series itself, read back from the endpoint the chart draws from, moved by
    // the burst (the legend above is computed from the same data).
    const plotted = await page.evaluate(async (token) => {
      const r = await fetch('/ui/api/series', { headers: { authorization: `Bearer ${token}` } });
      const body = await r.json();
      const denied = body.denied || body.series?.denied || [];
      return denied.reduce((a, b) => a + (b || 0), 0);
    }, TOKEN);
    assert.ok(plotted >= before + 8, `the series the chart plots counts the burst: ${plotted} < ${before} + 8`);

    step('shadow limits say what they would have denied');
    await page.waitForFunction(() => Array.from(document.querySelectorAll('#shadow-table tbody tr'))
      .some((tr) => tr.children[0]?.textContent === 'tenant-trial' && Number(tr.children[2]?.textContent) > 0));

    step('the policy is shown as tables, with versions');
    await page.waitForFunction(() => document.querySelectorAll('#policy-limits tbody tr').length >= 3);
    const policyFacts = await page.textContent('#policy-facts');
    assert.match(policyFacts, /spillway\.yaml/);
    assert.match(policyFacts, /database, version/);

    if (SCREENSHOT) {
      step(`writing a screenshot to ${SCREENSHOT}`);
      await page.evaluate(() => window.scrollTo(0, 0));
      await page.screenshot({ path: SCREENSHOT, fullPage: true });
    }

    step('a tier change through the admin API shows the new catalog version');
    await page.selectOption('#edit-tier', 'pro');
    await page.click('#tier-form button[type=submit]');
    await page.waitForFunction(() => /^Saved: catalog version \d+/.test(document.querySelector('#edit-result')?.textContent || ''));
    const version = await page.getAttribute('#edit-result', 'data-version');
    assert.ok(Number(version) >= 1, `a catalog version: ${version}`);
    await page.waitForFunction(() => /^pro \(from the tenant/.test(
      Array.from(document.querySelectorAll('#lookup-facts dd'))[2]?.textContent || ''));
    await page.waitForFunction((v) => (document.querySelector('#policy-facts')?.textContent || '')
      .includes(`version ${v}`), version);

    step('an override through the admin API applies at once');
    await page.selectOption('#edit-limit', 'tenant-hourly');
    await page.selectOption('#edit-field', 'burst');
    await page.fill('#edit-value', '100');
    await page.click('#override-form button[type=submit]');
    await page.waitForFunction((v) => {
      const m = /^Saved: catalog version (\d+)/.exec(document.querySelector('#edit-result')?.textContent || '');
      return m && Number(m[1]) > Number(v);
    }, version);
    await page.waitForFunction(() => Array.from(document.querySelectorAll('#lookup-limits tbody tr'))
      .some((tr) => tr.children[0]?.textContent === 'tenant-hourly' && / \/ 100 left$/.test(tr.children[3]?.textContent)
        && tr.children[6]?.textContent === 'tenant override'));

    step('usable at 1280x800: no horizontal scrolling');
    const wide = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
    assert.ok(wide[0] <= wide[1], `page ${wide[0]}px wide in a ${wide[1]}px window`);

    step('readable at phone width (390x844): no horizontal overflow of the body');
    await page.setViewportSize({ width: 390, height: 844 });
    reloading = true;
    await page.reload();
    await page.waitForSelector('#main:not([hidden])');
    reloading = false;
    await page.waitForFunction(() => document.querySelectorAll('#blocked-tenants tbody tr').length > 0
      && document.querySelector('#chart canvas'));
    // The chart's resize observer fits it to the narrow window.
    await page.waitForFunction(() =>
      document.querySelector('#chart canvas').getBoundingClientRect().right <= window.innerWidth);
    const narrow = await page.evaluate(() => ({
      doc: document.documentElement.scrollWidth,
      body: document.body.scrollWidth,
      inner: window.innerWidth,
      chart: document.querySelector('#chart canvas').getBoundingClientRect().right,
    }));
    assert.ok(narrow.body <= narrow.inner && narrow.doc <= narrow.inner,
      `no horizontal overflow at phone width: ${JSON.stringify(narrow)}`);
    assert.ok(narrow.chart <= narrow.inner, `the chart fits: ${JSON.stringify(narrow)}`);

    step('no console errors');
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  }
}

setTimeout(async () => {
  console.error(`ui.test: FAILED: not done within ${DEADLINE} ms`);
  await Promise.race([closeBrowser().catch(() => {}), new Promise((r) => setTimeout(r, 5000))]);
  process.exit(1);
}, DEADLINE).unref();

main().then(
  () => { console.log('ui.test: all checks passed'); process.exit(0); },
  (error) => { console.error(`ui.test: FAILED: ${error.stack || error}`); process.exit(1); },
);
