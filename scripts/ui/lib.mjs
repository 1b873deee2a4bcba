// What the dashboard's browser test and its timing script share: start the binary on a
// pipeline with the admin API, read the API, launch Debian's chromium.
import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

export const TOKEN = 'ui-test-token-0123456789abcdef';

/** Starts `tidegauge run` on `pipeline`; resolves with { origin, child, out } once the
 * admin API listens. */
export function startPipeline(bin, pipeline, extraEnv = {}) {
  const out = mkdtempSync(join(tmpdir(), 'tidegauge-ui-'));
  const child = spawn(bin, ['run', '--state-dir', join(out, 'state'), pipeline], {
    env: { ...process.env, TIDEGAUGE_UI_TOKEN: TOKEN, TIDEGAUGE_UI_OUT: out, NO_COLOR: '1', ...extraEnv },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the admin API did not start within 60 s:\n' + stderr)), 60000);
    child.on('exit', (code) => reject(new Error(`tidegauge exited (${code}) before listening:\n${stderr}`)));
    child.stderr.on('data', (d) => {
      stderr += d.toString();
      // The whole line: stderr may arrive cut anywhere.
      const m = stderr.match(/admin API on (http:\/\/[0-9.:]+)\r?\n/);
      if (m) {
        clearTimeout(timer);
        resolve({ origin: m[1], child, out });
      }
    });
  });
}

/** Stops the pipeline (SIGINT, as Ctrl-C) and waits for it. */
export function stopPipeline(p) {
  return new Promise((resolve) => {
    if (p.child.exitCode !== null) return resolve(p.child.exitCode);
    p.child.on('exit', (code) => resolve(code));
    p.child.kill('SIGINT');
    setTimeout(() => p.child.kill('SIGKILL'), 20000).unref();
  });
}

/** GET (or another method) on the admin API; the parsed answer and its status. */
export async function api(origin, path, { token, method = 'GET', body } = {}) {
  const headers = { 'Content-Type': 'application/json' };
  if (token) headers.Authorization = 'Bearer ' + token;
  const r = await fetch(origin + path, { method, headers, body });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch (_) { json = text; }
  return { status: r.status, body: json };
}

/** Polls `check` (async, returns a value or null) every 250 ms until it gives a value. */
export async function until(what, check, timeoutMs = 60000) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > end) throw new Error('timed out waiting for ' + what);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** Debian's chromium, headless, quiet (no background connections of its own). */
export async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
}
