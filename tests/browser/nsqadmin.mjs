// Opens nsqadmin in headless Chromium and checks that the suite is visible the way an operator
// sees it, then saves a screenshot.
//
//   node tests/browser/nsqadmin.mjs <nsqadmin url> <screenshot.png> [worker-id ...]
//
// It checks, reloading each page until its deadline (nsqadmin shows what nsqlookupd and nsqd
// report, which lags a client's connection by a moment):
//   - the topics sensor_data and results are listed;
//   - sensor_data has the channel worker with one connection per worker, and each client
//     shows up as `<host>:<port> (<worker id>)` with the user agent nsq-suite-worker/<version>;
//   - results has the channel logger, consumed by nsq-suite-logger/<version>;
//   - the message counts of both topics grow between two looks.
// The screenshot stacks two real pages: the nsqd node page (every topic, channel and client)
// and the worker channel page (the workers by client_id).
//
// The browser is Debian's chromium package (/usr/bin/chromium, or $NSQ_SUITE_CHROMIUM), never
// a downloaded build. Exit codes: 0 all checks passed, 1 a check failed, 2 usage, 3 Chromium
// could not start. Every failure prints one line starting with "nsqadmin.mjs: ".

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.NSQ_SUITE_CHROMIUM || '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
/// How long one check may keep reloading its page.
const CHECK_DEADLINE_MS = 20_000;
/// Pause between two looks at a page that did not show what is expected yet.
const RELOAD_PAUSE_MS = 500;

class CheckFailed extends Error {}

function fail(code, message) {
  console.error(`nsqadmin.mjs: ${message}`);
  process.exit(code);
}

const [baseArg, screenshot, ...workerIds] = process.argv.slice(2);
if (!baseArg || !screenshot) {
  fail(2, 'usage: node nsqadmin.mjs <nsqadmin url> <screenshot.png> [worker-id ...]');
}
const base = baseArg.replace(/\/+$/, '');
const expectedWorkers = workerIds.length || 2;

/// Every table of the page as rows of cell texts.
async function tables(page) {
  return page.$$eval('table', (ts) =>
    ts.map((t) => [...t.rows].map((r) => [...r.cells].map((c) => c.innerText.trim()))),
  );
}

/// The first table whose first row holds all of `headers`, as objects keyed by header.
function findTable(all, headers) {
  for (const rows of all) {
    const head = rows.find((r) => headers.every((h) => r.includes(h)));
    if (!head) continue;
    const start = rows.indexOf(head) + 1;
    return rows
      .slice(start)
      .filter((r) => r.length === head.length)
      .map((r) => Object.fromEntries(head.map((h, i) => [h, r[i]])));
  }
  return null;
}

/// "12,345" -> 12345.
function count(text) {
  const n = Number(String(text ?? '').replace(/,/g, ''));
  return Number.isFinite(n) ? n : NaN;
}

/// Loads `url` and applies `judge` to its tables until it returns a value (not undefined) or
/// throws CheckFailed after the deadline with the last reason it gave.
async function check(page, url, what, judge) {
  const deadline = Date.now() + CHECK_DEADLINE_MS;
  let reason = 'page not loaded';
  for (;;) {
    try {
      await page.goto(`${base}${url}`, { waitUntil: 'networkidle', timeout: 15_000 });
      const verdict = judge(await tables(page));
      if (verdict.ok) {
        console.log(`ok: ${what} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
        return verdict.value;
      }
      reason = verdict.reason;
      // nsqadmin reports its own trouble (e.g. UPSTREAM_ERROR) in an alert box.
      const alert = await page
        .$$eval('.alert', (as) => as.map((a) => a.innerText.trim()).filter(Boolean).join(' | '))
        .catch(() => '');
      if (alert) reason += ` (nsqadmin says: ${alert.replace(/\s+/g, ' ').slice(0, 300)})`;
    } catch (e) {
      reason = `loading ${url}: ${e.message.split('\n')[0]}`;
    }
    if (Date.now() > deadline) {
      throw new CheckFailed(`${what}: ${reason} (page ${base}${url})`);
    }
    console.log(`not yet: ${what}: ${reason} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
    await new Promise((r) => setTimeout(r, RELOAD_PAUSE_MS));
  }
}

const t0 = Date.now();
const ok = (value) => ({ ok: true, value });
const no = (reason) => ({ ok: false, reason });

/// The Messages total of a topic page (sum over nsqd).
function topicMessages(all) {
  const hosts = findTable(all, ['NSQd Host', 'Messages', 'Channels']);
  const total = hosts?.find((r) => r['NSQd Host'].startsWith('Total')) ?? hosts?.[0];
  return total ? count(total.Messages) : NaN;
}

async function run(page) {
  await check(page, '/', 'topics sensor_data and results are listed', (all) => {
    const topics = (findTable(all, ['Topic']) ?? []).map((r) => r.Topic);
    const missing = ['sensor_data', 'results'].filter((t) => !topics.includes(t));
    return missing.length ? no(`missing ${missing.join(', ')} in [${topics}]`) : ok();
  });

  const channelRow = (all, name) =>
    (findTable(all, ['Channel', 'Connections']) ?? []).find((r) => r.Channel === name);

  const first = {};
  first.sensor_data = await check(
    page,
    '/topics/sensor_data',
    `sensor_data has the channel worker with ${expectedWorkers} connections`,
    (all) => {
      const row = channelRow(all, 'worker');
      if (!row) return no('no channel worker');
      if (count(row.Connections) !== expectedWorkers) {
        return no(`worker has ${row.Connections} connections`);
      }
      const n = topicMessages(all);
      return n > 0 ? ok(n) : no(`message count ${n}`);
    },
  );

  const nsqdHost = await check(
    page,
    '/topics/sensor_data/worker',
    'the workers appear by client_id with the user agent nsq-suite-worker/<version>',
    (all) => {
      const clients = findTable(all, ['Client Host', 'User-Agent', 'NSQd Host']) ?? [];
      if (clients.length !== expectedWorkers) {
        return no(`${clients.length} clients: ${JSON.stringify(clients)}`);
      }
      const ids = [];
      for (const c of clients) {
        if (!/^nsq-suite-worker\/\d+\.\d+\.\d+/.test(c['User-Agent'])) {
          return no(`user agent '${c['User-Agent']}' is not nsq-suite-worker/<version>`);
        }
        const id = /\(([^)]+)\)$/.exec(c['Client Host'])?.[1];
        if (!id) return no(`client host '${c['Client Host']}' shows no client_id`);
        ids.push(id);
      }
      const want = workerIds.length ? workerIds : [...new Set(ids)];
      if (want.length !== expectedWorkers || ![...want].sort().every((w, i) => w === [...ids].sort()[i])) {
        return no(`client ids [${ids}], expected [${want}]`);
      }
      return ok(clients[0]['NSQd Host']);
    },
  );

  first.results = await check(page, '/topics/results', 'results has the channel logger', (all) => {
    const row = channelRow(all, 'logger');
    if (!row) return no('no channel logger');
    if (count(row.Connections) < 1) return no('logger has no connection');
    const n = topicMessages(all);
    return n > 0 ? ok(n) : no(`message count ${n}`);
  });

  await check(
    page,
    '/topics/results/logger',
    'the logger appears with the user agent nsq-suite-logger/<version>',
    (all) => {
      const clients = findTable(all, ['Client Host', 'User-Agent']) ?? [];
      const agents = clients.map((c) => c['User-Agent']);
      return agents.some((a) => /^nsq-suite-logger\/\d+\.\d+\.\d+/.test(a))
        ? ok()
        : no(`user agents [${agents}]`);
    },
  );

  for (const topic of ['sensor_data', 'results']) {
    await check(page, `/topics/${topic}`, `the message count of ${topic} grows`, (all) => {
      const n = topicMessages(all);
      return n > first[topic] ? ok(n) : no(`still ${n} messages (first look: ${first[topic]})`);
    });
  }

  // The picture: the node page (everything on one nsqd) above the worker channel page.
  const shots = [];
  const shoot = async (url, title) => {
    await page.goto(`${base}${url}`, { waitUntil: 'networkidle', timeout: 15_000 });
    shots.push({ title, png: await page.screenshot({ fullPage: true }) });
  };
  await shoot(`/nodes/${encodeURIComponent(nsqdHost)}`, `nsqadmin: nsqd ${nsqdHost}, its topics, channels and clients`);
  await shoot('/topics/sensor_data/worker', 'nsqadmin: channel worker of sensor_data, one client per worker (client_id in brackets)');
  const html = shots
    .map(
      (s) =>
        `<div style="font:13px sans-serif;padding:6px 16px;background:#555;color:#fff">${s.title}</div>` +
        `<img style="display:block" src="data:image/png;base64,${s.png.toString('base64')}">`,
    )
    .join('');
  await page.setContent(`<html><body style="margin:0;background:#fff">${html}</body></html>`);
  await page.waitForFunction(() => [...document.images].every((i) => i.complete));
  fs.mkdirSync(path.dirname(path.resolve(screenshot)), { recursive: true });
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(`screenshot: ${screenshot}`);
}

if (!fs.existsSync(CHROMIUM)) {
  fail(3, `Chromium is not installed at ${CHROMIUM} (apt-get install chromium; .ci/run does it)`);
}
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'nsq-suite-chromium-'));
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    // A short viewport: full-page screenshots are then as tall as the content.
    viewport: { width: 1280, height: 300 },
    timeout: 30_000,
  });
} catch (e) {
  fs.rmSync(profile, { recursive: true, force: true });
  fail(3, `Chromium could not start (${CHROMIUM}): ${e.message.split('\n').slice(0, 6).join(' | ')}`);
}

let code = 0;
try {
  const page = context.pages()[0] ?? (await context.newPage());
  await run(page);
} catch (e) {
  code = 1;
  console.error(`nsqadmin.mjs: ${e instanceof CheckFailed ? 'check failed: ' : ''}${e.message}`);
} finally {
  await context.close().catch(() => {});
  fs.rmSync(profile, { recursive: true, force: true });
}
process.exit(code);
