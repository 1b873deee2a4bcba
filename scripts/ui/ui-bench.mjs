// How responsive the dashboard is on a large pipeline: a simulated fleet of SENSORS
// sensors at RATE events/s through a z-score, the page in Debian's headless chromium.
// Prints times (not checked against any bound: figures for the README).
//
// Usage: node ui-bench.mjs <tidegauge binary> [sensors] [rate] [history_sensors] [history_points]
import { writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { api, launch, startPipeline, stopPipeline, until } from './lib.mjs';

const [bin, sensors = '100000', rate = '10000', historySensors = '2000', historyPoints = '180'] = process.argv.slice(2);
if (!bin) {
  console.error('usage: node ui-bench.mjs <tidegauge binary> [sensors] [rate] [history_sensors] [history_points]');
  process.exit(2);
}
const dir = mkdtempSync(join(tmpdir(), 'tidegauge-ui-bench-'));
const pipeline = join(dir, 'pipeline.toml');
writeFileSync(pipeline, `
[admin]
address = "127.0.0.1:0"
token_env = "TIDEGAUGE_UI_TOKEN"
history_sensors = ${historySensors}
history_points = ${historyPoints}

[sources.fleet]
type = "simulate"
sensors = ${sensors}
rate = ${rate}

[sources.fleet.inject]
spike_probability = 0.002

[transforms.spikes]
type = "zscore"
inputs = ["fleet"]
window = 20
threshold = 4.0
max_keys = ${Math.max(100000, Number(sensors))}

[transforms.anomalies]
type = "filter"
inputs = ["spikes"]
condition = "is_anomaly"

[sinks.out]
type = "jsonl"
inputs = ["anomalies"]
path = "${dir}/anomalies.jsonl"
`);

const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]; };
const ms = (x) => x.toFixed(0) + ' ms';

const p = await startPipeline(bin, pipeline);
const { origin } = p;
let browser;
try {
  // Let the fleet fill the history: every slot taken, or 30 s.
  const started = Date.now();
  await until('the history to fill', async () => {
    const r = await api(origin, '/sensors?limit=1');
    return r.status === 200 && (r.body.history.tracked >= Math.min(Number(historySensors), Number(sensors)) || Date.now() - started > 30000);
  }, 120000);
  await new Promise((r) => setTimeout(r, 5000));
  const stats = (await api(origin, '/sensors?limit=1')).body.history;
  const comps = (await api(origin, '/components')).body;
  const c0 = comps.find((c) => c.id === 'fleet').events_out;
  await new Promise((r) => setTimeout(r, 2000));
  const c1 = (await api(origin, '/components')).body.find((c) => c.id === 'fleet').events_out;
  console.log(`load average (1, 5, 15 min) at start: ${(await import('node:fs')).readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')} on ${(await import('node:os')).cpus().length} cores`);
  console.log(`pipeline: ${sensors} sensors, ${rate} events/s asked, ${((c1 - c0) / 2).toFixed(0)} events/s measured`);
  console.log(`history: ${stats.tracked} series kept (at most ${stats.max_sensors} x ${stats.points_per_sensor} points, bound ${(stats.bytes_bound / 1048576).toFixed(1)} MiB)`);

  // Server side: the routes the page calls, timed from here (median of 10).
  for (const path of ['/sensors?limit=200&q=', '/sensors?limit=200&q=s-0999', '/sensors/top?limit=20', '/components', '/topology']) {
    const times = [];
    for (let i = 0; i < 10; i++) {
      const t = performance.now();
      await api(origin, path);
      times.push(performance.now() - t);
    }
    console.log(`GET ${path}: median ${ms(median(times))}, max ${ms(Math.max(...times))}`);
  }

  browser = await launch();
  const page = await (await browser.newContext({ viewport: { width: 1400, height: 1000 } })).newPage();
  const firstRender = [];
  const listed = [];
  for (let i = 0; i < 5; i++) {
    const t = performance.now();
    await page.goto(origin + '/ui');
    await page.waitForSelector('#graph g.node');
    firstRender.push(performance.now() - t);
    await page.waitForSelector('#sensor-list li');
    listed.push(performance.now() - t);
  }
  console.log(`first render (navigation to the graph drawn): median ${ms(median(firstRender))}, max ${ms(Math.max(...firstRender))}`);
  console.log(`sensor list shown (navigation to the first 200 sensors listed): median ${ms(median(listed))}, max ${ms(Math.max(...listed))}`);

  const searches = [];
  const opens = [];
  const sample = (await api(origin, '/sensors?limit=1000&q=')).body.sensors;
  for (let i = 0; i < 10; i++) {
    const s = sample[Math.floor((i * sample.length) / 10)];
    let t = performance.now();
    await page.fill('#sensor-search', s.sensor);
    await page.waitForFunction((id) => {
      const l = [...document.querySelectorAll('#sensor-list li')];
      return l.length > 0 && l.every((li) => li.dataset.sensor.includes(id));
    }, s.sensor);
    searches.push(performance.now() - t - 150); // less the page's 150 ms typing debounce
    t = performance.now();
    await page.click(`#sensor-list li[data-sensor="${s.sensor}"]`);
    await page.waitForFunction((id) => document.getElementById('sensor-title').textContent.startsWith(id) &&
      document.querySelector('#sensor-chart canvas') && document.getElementById('sensor-chart').dataset.points, s.sensor);
    opens.push(performance.now() - t);
  }
  console.log(`search (typing done to list filtered, less the 150 ms debounce): median ${ms(median(searches))}, max ${ms(Math.max(...searches))}`);
  console.log(`open a sensor (click to chart drawn): median ${ms(median(opens))}, max ${ms(Math.max(...opens))}`);
  // Is the page busy? A frame-timing probe while the feed runs.
  const frames = await page.evaluate(() => new Promise((resolve) => {
    const gaps = [];
    let last = performance.now();
    const end = last + 5000;
    const step = (now) => {
      gaps.push(now - last);
      last = now;
      if (now < end) requestAnimationFrame(step); else resolve(gaps);
    };
    requestAnimationFrame(step);
  }));
  console.log(`while live for 5 s: ${frames.length} frames, longest gap ${ms(Math.max(...frames))}`);
  const heap = await page.evaluate(() => (performance.memory ? performance.memory.usedJSHeapSize : 0));
  if (heap) console.log(`page JS heap: ${(heap / 1048576).toFixed(1)} MiB`);
  const rss = (await import('node:fs')).readFileSync(`/proc/${p.child.pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/);
  if (rss) console.log(`tidegauge RSS: ${(Number(rss[1]) / 1024).toFixed(0)} MiB`);
} finally {
  if (browser) await browser.close();
  await stopPipeline(p);
}
