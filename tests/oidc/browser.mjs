// Drive the user's part of an authorization-code login in a real headless
// Chromium (Debian's /usr/bin/chromium through playwright-core; no browser is
// downloaded): open the authorization URL, sign in on node-oidc-provider's dev
// login page, approve (or cancel) on its consent page, and follow the final
// redirect to the client's redirect_uri, wherever it points.
//
//   node browser.mjs '{"url": "...", "deny": false, "login": "alice", "timeout_ms": 55000,
//                      "allow_unreachable": false}'
//
// Prints one JSON line on stdout: {"url": final page URL, "text": its body text,
// "status": HTTP status of the final navigation or null, "redirect_url": the first
// URL outside the authorization server that the browser was sent to,
// "pages": [titles/URLs of the pages passed through], "error": null or a message,
// "unreachable": why the redirect target did not load, with allow_unreachable}.
// Exit status 0 when the browser reached a page outside the authorization
// server (or, with allow_unreachable, was sent to one that did not answer),
// 1 otherwise. $CHROMIUM overrides the browser binary.
//
// Only loopback addresses are reachable: any other request (e.g. the dev
// pages' Google Fonts import) is aborted inside the browser.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import process from 'node:process';
import { chromium } from 'playwright-core';

const opts = JSON.parse(process.argv[2] ?? '{}');
if (!opts.url) {
  console.error('usage: node browser.mjs \'{"url": "AUTHORIZATION_URL", "deny": false}\'');
  process.exit(2);
}
const timeoutMs = opts.timeout_ms ?? 55000;
const executablePath = process.env.CHROMIUM ?? '/usr/bin/chromium';
const issuerOrigin = new URL(opts.url).origin;
const LOOPBACK = new Set(['127.0.0.1', 'localhost', '[::1]']);

const result = {
  url: null, text: null, status: null, redirect_url: null, pages: [], error: null, unreachable: null,
};

function outside(u) {
  try { return new URL(u).origin !== issuerOrigin; } catch { return false; }
}

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'freshtoken-chromium-'));
let context;
const deadline = setTimeout(() => {
  result.error = `timed out after ${timeoutMs} ms`;
  finish(1);
}, timeoutMs);

let finished = false;
async function finish(code) {
  if (finished) return;
  finished = true;
  clearTimeout(deadline);
  process.stdout.write(`${JSON.stringify(result)}\n`);
  try { await context?.close(); } catch { /* already gone */ }
  fs.rmSync(userDataDir, { recursive: true, force: true });
  process.exit(code);
}

try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    timeout: timeoutMs,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--disable-dev-shm-usage',
    ],
  });
  await context.route('**/*', (route) => {
    const { hostname, protocol } = new URL(route.request().url());
    if ((protocol === 'http:' || protocol === 'https:') && !LOOPBACK.has(hostname)) {
      return route.abort('blockedbyclient');
    }
    return route.continue();
  });
  const page = context.pages()[0] ?? await context.newPage();
  page.setDefaultTimeout(timeoutMs);
  page.on('request', (req) => {
    if (req.isNavigationRequest() && req.frame() === page.mainFrame()
        && !result.redirect_url && outside(req.url())) {
      result.redirect_url = req.url();
    }
  });

  let response = await page.goto(opts.url, { waitUntil: 'load' });
  for (let step = 0; step < 10 && !outside(page.url()); step += 1) {
    result.pages.push(`${await page.title()} <${page.url()}>`);
    const loginBox = page.locator('input[name="login"]');
    const submit = page.locator('form button[type="submit"]');
    const cancel = page.locator('a', { hasText: 'Cancel' });
    const navigation = page.waitForNavigation({ waitUntil: 'load' });
    navigation.catch(() => {}); // awaited below; do not let an early failure go unhandled
    if (opts.deny && await cancel.count()) {
      await cancel.first().click();
    } else if (await loginBox.count()) {
      await loginBox.fill(opts.login ?? 'alice');
      await page.locator('input[name="password"]').fill(opts.password ?? 'any-password');
      await submit.first().click();
    } else if (await submit.count()) {
      await submit.first().click();
    } else {
      result.error = `stuck on a page without a form: ${(await page.innerText('body')).slice(0, 500)}`;
      break;
    }
    response = await navigation;
  }
  result.url = page.url();
  result.status = response?.status() ?? null;
  result.text = await page.innerText('body').catch(() => null);
  if (!outside(result.url) && !result.error) {
    result.error = 'never left the authorization server';
  }
  if (result.url.startsWith('chrome-error:')) {
    if (opts.allow_unreachable) {
      result.unreachable = 'chrome error page';
    } else {
      result.error = `the redirect target could not be loaded (${result.redirect_url})`;
    }
  }
  await finish(result.error ? 1 : 0);
} catch (err) {
  const message = String(err?.message ?? err).split('\n')[0];
  result.url = context?.pages()[0]?.url() ?? null;
  if (result.redirect_url && opts.allow_unreachable) {
    // --manual style: nothing listens on the redirect_uri; the user copies the URL.
    result.unreachable = message;
    await finish(0);
  }
  result.error = result.redirect_url
    ? `the redirect target ${result.redirect_url} could not be loaded: ${message}`
    : message;
  await finish(1);
}
