// Browser test of the dashboard: runs the binary on a simulated pipeline with the admin
// API, opens /ui in Debian's chromium and checks what a user sees and does. Saves
// screenshots (PNG) in the directory given. Exit status 1 on any failed check.
//
// Usage: node ui-test.mjs <tidegauge binary> <pipeline.toml> <screenshot dir>
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { TOKEN, api, launch, startPipeline, stopPipeline, until } from './lib.mjs';

const [bin, pipeline, shots] = process.argv.slice(2);
if (!bin || !pipeline || !shots) {
  console.error('usage: node ui-test.mjs <tidegauge binary> <pipeline.toml> <screenshot dir>');
  process.exit(2);
}
mkdirSync(shots, { recursive: true });

let failures = 0;
function check(ok, what, detail) {
  if (ok) console.log('ok   ' + what);
  else {
    failures += 1;
    console.log('FAIL ' + what + (detail !== undefined ? ': ' + JSON.stringify(detail) : ''));
  }
}

const p = await startPipeline(bin, pipeline);
const { origin } = p;
console.log('pipeline running, admin API on ' + origin);
let browser;
const consoleErrors = [];
try {
  // A sensor with an anomaly among its kept points: the one flagged most recently.
  await until('an anomaly in the sensor history', async () => {
    const r = await api(origin, '/sensors/top?limit=5');
    return r.status === 200 && r.body.sensors.length > 0;
  });
  const topology = (await api(origin, '/topology')).body;

  browser = await launch();
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  const page = await context.newPage();
  const requests = [];
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  page.on('pageerror', (e) => consoleErrors.push('page error: ' + e.message));
  page.on('request', (r) => requests.push(r.url()));

  // 1. The graph shows every component.
  await page.goto(origin + '/ui');
  await page.waitForSelector('#graph g.node');
  await until('the live counters in the graph', async () =>
    (await page.textContent('#graph')).includes('/s') && !(await page.textContent('#graph')).includes('…/s'), 20000);
  const shown = await page.$$eval('#graph g.node', (gs) => gs.map((g) => g.dataset.id));
  const ids = topology.nodes.map((n) => n.id);
  check(ids.every((id) => shown.includes(id)) && shown.length === ids.length,
    `the graph shows every component (${ids.join(', ')})`, shown);
  const edges = await page.$$eval('#graph path.edge', (es) => es.length);
  check(edges === topology.edges.length, `the graph draws every edge (${topology.edges.length})`, edges);
  await page.screenshot({ path: join(shots, 'dashboard.png'), fullPage: true });

  // 2. A sensor's chart has points and an anomaly marker.
  const top = (await api(origin, '/sensors/top?limit=50')).body.sensors;
  top.sort((a, b) => b.last_anomaly_ms - a.last_anomaly_ms);
  const target = top[0];
  await page.fill('#sensor-search', target.sensor);
  const item = `#sensor-list li[data-sensor="${target.sensor}"][data-component="${target.component}"]`;
  await page.waitForFunction((s) => {
    const l = [...document.querySelectorAll('#sensor-list li')];
    return l.length > 0 && l.every((li) => li.dataset.sensor.includes(s));
  }, target.sensor);
  const listed = await page.$$eval('#sensor-list li', (l) => l.length);
  check(listed >= 1, `searching "${target.sensor}" lists it (${listed} match)`);
  await page.click(item);
  await page.waitForSelector('#sensor-chart[data-points] canvas');
  const drawn = await page.$eval('#sensor-chart', (e) => ({ points: Number(e.dataset.points), anomalies: Number(e.dataset.anomalies) }));
  check(drawn.points > 0, `the chart of ${target.sensor} has points (${drawn.points})`, drawn);
  check(drawn.anomalies > 0, `the chart of ${target.sensor} marks an anomaly (${drawn.anomalies})`, drawn);
  // The live feed adds points without the page asking again.
  const before = (await page.$eval('#sensor-stats', (e) => e.textContent)).match(/of (\d+) seen/);
  await page.waitForFunction((n) => {
    const m = document.getElementById('sensor-stats').textContent.match(/of (\d+) seen/);
    return m && Number(m[1]) > n;
  }, before ? Number(before[1]) : 0, { timeout: 15000 });
  check(true, 'the live feed (Server-Sent Events) adds points to the open chart');
  await page.locator('#sensors').screenshot({ path: join(shots, 'sensor.png') });

  // 3. Editing a threshold with the token changes it (API and history agree).
  await page.click('#token-button');
  await page.fill('#token-input', TOKEN);
  await page.click('#token-save');
  await page.selectOption('#param-component', 'spikes');
  await page.waitForSelector('input[data-param="threshold"]');
  const old = (await api(origin, '/components/spikes/params', { token: TOKEN })).body.params.find((x) => x.name === 'threshold').value;
  const wanted = old === 3.5 ? 3.25 : 3.5;
  await page.fill('input[data-param="threshold"]', String(wanted));
  await page.click('button[data-apply="threshold"]');
  await page.waitForSelector('#param-error.ok');
  const message = await page.textContent('#param-error');
  check(message.includes(String(wanted)), `the page confirms the change (${message})`);
  const now = (await api(origin, '/components/spikes/params', { token: TOKEN })).body.params.find((x) => x.name === 'threshold').value;
  check(now === wanted, `the API reports threshold ${wanted} (was ${old})`, now);
  const history = (await api(origin, '/changes', { token: TOKEN })).body;
  const last = history[history.length - 1];
  check(last && last.component === 'spikes' && last.parameter === 'threshold' && last.new === wanted && last.old === old && last.actor === 'dashboard',
    'the change history records it (old, new, actor "dashboard")', last);
  await page.waitForFunction((v) => document.querySelector('#change-table tbody').textContent.includes(String(v)), wanted);
  check(true, 'the page shows the change in its history table');
  // Beside the chart: the detector's statistic and its threshold, now the new one.
  await page.waitForFunction((v) => {
    const m = document.getElementById('sensor-stats').textContent.match(/threshold\s*([0-9.]+)/);
    return m && Number(m[1]) === v;
  }, wanted);
  const beside = await page.textContent('#sensor-stats');
  check(/z\s+-?[0-9]/.test(beside), `the chart shows the statistic and the new threshold beside it (${beside})`);
  await page.locator('#params').screenshot({ path: join(shots, 'parameters.png') });

  // 4. Without the token the change is refused and the page says so.
  await page.click('#token-button');
  await page.click('#token-forget');
  const errorsBefore = consoleErrors.length;
  await page.fill('input[data-param="threshold"]', '9');
  await page.click('button[data-apply="threshold"]');
  await page.waitForFunction(() => /not changed/.test(document.getElementById('param-error').textContent));
  const refused = await page.textContent('#param-error');
  check(/Authorization: Bearer/.test(refused), `without the token the page shows the API's refusal (${refused})`);
  const still = (await api(origin, '/components/spikes/params', { token: TOKEN })).body.params.find((x) => x.name === 'threshold').value;
  check(still === wanted, 'and the threshold is unchanged', still);
  const after = (await api(origin, '/changes', { token: TOKEN })).body;
  check(after.length === history.length, 'and the history has no new record', after.length - history.length);
  // The browser logs the refused request (401) as an error of its own: that one, once.
  const refusals = consoleErrors.splice(errorsBefore).filter((e) => !/status of 401/.test(e));
  consoleErrors.push(...refusals);

  // 5. Logs search (with the token again): the change above is logged.
  await page.click('#token-button');
  await page.fill('#token-input', TOKEN);
  await page.click('#token-save');
  await page.fill('#log-text', 'parameter changed');
  await page.click('#log-search');
  await page.waitForFunction(() => /threshold/.test(document.getElementById('log-lines').textContent), null, { timeout: 15000 });
  check(true, 'the logs search finds the logged change');

  // 6. Top sensors and incidents are filled from the feed.
  const topRows = await page.$$eval('#top-table tbody tr', (r) => r.length);
  check(topRows > 0, `the top anomalous sensors are listed (${topRows})`);
  const incidents = await page.$$eval('#incident-table tbody tr', (r) => r.map((x) => x.textContent));
  check(incidents.length > 0 && !incidents[0].includes('none open'), `open incidents are listed (${incidents.length})`);
  await page.screenshot({ path: join(shots, 'dashboard-full.png'), fullPage: true });

  // 7. Nothing left the admin address; nothing went wrong in the page.
  const outside = requests.filter((u) => !u.startsWith(origin + '/') && !u.startsWith('data:'));
  check(outside.length === 0, `every request (${requests.length}) went to ${origin}`, outside);
  check(consoleErrors.length === 0, 'no console errors', consoleErrors);
} catch (e) {
  failures += 1;
  console.log('FAIL ' + (e.stack || e));
  if (consoleErrors.length) console.log('console errors: ' + JSON.stringify(consoleErrors));
} finally {
  if (browser) await browser.close();
  const code = await stopPipeline(p);
  check(code === 0, 'the pipeline stops cleanly on SIGINT', code);
}
console.log(failures ? `${failures} check(s) failed` : 'all checks passed');
process.exit(failures ? 1 : 0);
