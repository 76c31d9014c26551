// A real OAuth 2.0 authorization server for freshtoken's tests: node-oidc-provider
// (npm `oidc-provider` 9.x), configured like a Spotify-ish provider (opaque access
// tokens with a short life, rotating refresh tokens, loopback redirect URIs).
//
//   node server.mjs [PORT]         PORT (or $PORT) 0 = a free port (the default)
//
// Environment: ACCESS_TTL (seconds, default 60), REFRESH_TTL (seconds, default
// 14 days), PORT.
//
// Once listening it prints exactly one JSON line on stdout (issuer, endpoints,
// clients, scopes) and nothing else ever goes to stdout; logs go to stderr.
// It exits on SIGTERM/SIGINT, and when its stdin (a pipe or a terminal) closes,
// so a test that dies cannot leave it behind.
//
// Test-only: any login/password is accepted by the dev login page.

import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import process from 'node:process';

// oidc-provider prints notices with console.info (stdout): keep stdout for the JSON line.
console.info = (...args) => console.error(...args);
console.log = (...args) => console.error(...args);

const { default: Provider, errors } = await import('oidc-provider');

const HOST = '127.0.0.1';
const requestedPort = Number.parseInt(process.argv[2] ?? process.env.PORT ?? '0', 10);
const ACCESS_TTL = Number.parseInt(process.env.ACCESS_TTL ?? '60', 10);
const REFRESH_TTL = Number.parseInt(process.env.REFRESH_TTL ?? String(14 * 24 * 3600), 10);
if (!Number.isInteger(requestedPort) || requestedPort < 0 || requestedPort > 65535) {
  console.error(`server.mjs: bad port ${process.argv[2] ?? process.env.PORT}`);
  process.exit(2);
}
if (!(ACCESS_TTL > 0) || !(REFRESH_TTL > 0)) {
  console.error('server.mjs: ACCESS_TTL and REFRESH_TTL must be positive integers (seconds)');
  process.exit(2);
}

// The resource server that the access tokens are for. Requests need not name it
// (`resource` is defaulted to it); without a resource scope the provider would
// grant nothing and answer access_denied.
const RESOURCE = 'urn:freshtoken:test-api';
const RESOURCE_SCOPES = ['api:read', 'api:write'];

// Loopback redirect URIs of native clients match with any port (RFC 8252 §7.3).
const REDIRECT_URIS = [
  'http://127.0.0.1/callback',
  'http://127.0.0.1:8888/callback',
  'http://127.0.0.1/',
  'http://localhost/callback',
  'http://[::1]/callback',
];

const CLIENTS = [
  {
    client_id: 'conf-client',
    client_secret: 'conf-client-secret',
    token_endpoint_auth_method: 'client_secret_basic', // client_secret_post is accepted too
    application_type: 'native',
    redirect_uris: REDIRECT_URIS,
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
  },
  {
    client_id: 'public-client',
    token_endpoint_auth_method: 'none', // PKCE required
    application_type: 'native',
    redirect_uris: REDIRECT_URIS,
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
  },
  {
    // Device authorization grant (RFC 8628) only: public, no redirect URIs.
    client_id: 'device-client',
    token_endpoint_auth_method: 'none',
    application_type: 'native',
    redirect_uris: [],
    grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'refresh_token'],
    response_types: [],
  },
  {
    client_id: 'cc-client',
    client_secret: 'cc-client-secret',
    token_endpoint_auth_method: 'client_secret_basic',
    redirect_uris: [],
    grant_types: ['client_credentials'],
    response_types: [],
  },
];

// ID token signing key (only used when `openid` is requested): a fresh one per run.
const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), alg: 'RS256', use: 'sig', kid: 'test' };

function errText(err) {
  if (!err) return String(err);
  const parts = [err.name, err.error ?? '', err.error_description ?? err.message ?? ''];
  if (err.error_detail) parts.push(`detail: ${err.error_detail}`);
  return parts.filter(Boolean).join(' ');
}

async function main() {
  const server = http.createServer();
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(requestedPort, HOST, resolve);
  });
  const { port } = server.address();
  const issuer = `http://${HOST}:${port}`;

  const provider = new Provider(issuer, {
    clients: CLIENTS,
    jwks: { keys: [signingKey] },
    cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
    async findAccount(_ctx, sub) {
      return { accountId: sub, async claims() { return { sub }; } };
    },
    features: {
      devInteractions: { enabled: true },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      // Routes /device/auth (device authorization) and /device (the user's page); its answer has no `interval`.
      deviceFlow: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => RESOURCE,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (_ctx, resourceIndicator) => {
          if (resourceIndicator !== RESOURCE) throw new errors.InvalidTarget();
          return {
            scope: RESOURCE_SCOPES.join(' '),
            audience: RESOURCE,
            accessTokenFormat: 'opaque',
            accessTokenTTL: ACCESS_TTL,
          };
        },
      },
    },
    pkce: {
      // Required for public clients, allowed (used when sent) for confidential ones.
      required: (_ctx, client) => client.clientAuthMethod === 'none',
    },
    // Refresh tokens without offline_access, living independently of the login session.
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    expiresWithSession: async () => false,
    rotateRefreshToken: true,
    clientBasedCORS: () => false,
    ttl: {
      AccessToken: ACCESS_TTL,
      ClientCredentials: ACCESS_TTL,
      RefreshToken: REFRESH_TTL,
      Grant: REFRESH_TTL,
      Session: 3600,
      Interaction: 600,
      AuthorizationCode: 60,
      IdToken: ACCESS_TTL,
    },
  });

  for (const event of [
    'grant.error', 'server_error', 'authorization.error', 'introspection.error',
    'revocation.error', 'userinfo.error', 'interaction.error', 'discovery.error',
  ]) {
    provider.on(event, (_ctx, err) => console.error(`oidc ${event}: ${errText(err)}`));
  }
  provider.on('grant.success', (ctx) => {
    console.error(`oidc grant.success: ${ctx.oidc.params?.grant_type} client=${ctx.oidc.client?.clientId}`);
  });
  provider.on('grant.revoked', (_ctx, grantId) => console.error(`oidc grant.revoked: ${grantId}`));

  // GET /me with `Authorization: Bearer <access token>`: a tiny protected resource.
  // 200 {active, sub, client_id, scope, exp, kind} for a live token, else 401.
  async function me(req, res) {
    const auth = req.headers.authorization ?? '';
    const match = /^Bearer\s+(\S+)$/i.exec(auth);
    let token;
    if (match) {
      token = await provider.AccessToken.find(match[1])
        ?? await provider.ClientCredentials.find(match[1]);
    }
    if (!token || token.isExpired) {
      res.writeHead(401, {
        'content-type': 'application/json',
        'www-authenticate': 'Bearer error="invalid_token"',
      });
      res.end(JSON.stringify({ active: false }));
      return;
    }
    // An access token of a revoked grant (e.g. refresh token reuse) is dead too.
    if (token.grantId && !(await provider.Grant.find(token.grantId))) {
      res.writeHead(401, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ active: false }));
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({
      active: true,
      kind: token.kind,
      sub: token.accountId ?? null,
      client_id: token.clientId,
      scope: token.scope ?? '',
      exp: token.exp,
      aud: token.aud ?? null,
    }));
  }

  const callback = provider.callback();
  server.on('request', (req, res) => {
    const path = req.url.split('?')[0];
    if (path === '/me' && (req.method === 'GET' || req.method === 'POST')) {
      me(req, res).catch((err) => {
        console.error(`oidc /me error: ${err.stack ?? err}`);
        res.writeHead(500);
        res.end();
      });
      return;
    }
    callback(req, res);
  });
  server.removeAllListeners('error');
  server.on('error', (err) => console.error(`server error: ${err.stack ?? err}`));

  const info = {
    issuer,
    port,
    authorization_endpoint: `${issuer}/auth`,
    token_endpoint: `${issuer}/token`,
    introspection_endpoint: `${issuer}/token/introspection`,
    revocation_endpoint: `${issuer}/token/revocation`,
    device_authorization_endpoint: `${issuer}/device/auth`,
    userinfo_endpoint: `${issuer}/me`,
    discovery: `${issuer}/.well-known/openid-configuration`,
    resource: RESOURCE,
    scopes: RESOURCE_SCOPES,
    access_ttl: ACCESS_TTL,
    refresh_ttl: REFRESH_TTL,
    clients: CLIENTS.map((c) => ({
      client_id: c.client_id,
      client_secret: c.client_secret ?? null,
      token_endpoint_auth_method: c.token_endpoint_auth_method,
      redirect_uris: c.redirect_uris,
      grant_types: c.grant_types,
    })),
  };
  process.stdout.write(`${JSON.stringify(info)}\n`);
  console.error(`oidc-provider listening on ${issuer} (access ttl ${ACCESS_TTL}s)`);

  let stopping = false;
  function stop(why) {
    if (stopping) return;
    stopping = true;
    console.error(`oidc-provider stopping (${why})`);
    server.close();
    server.closeAllConnections?.();
    // Do not wait for idle keep-alive sockets of a browser.
    setTimeout(() => process.exit(0), 200).unref();
  }
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));

  // Exit when the parent goes away: watch stdin when it is a pipe or a terminal
  // (not /dev/null, which would end at once).
  let stdinStat;
  try { stdinStat = fs.fstatSync(0); } catch { stdinStat = undefined; }
  if (stdinStat && (stdinStat.isFIFO() || stdinStat.isSocket() || process.stdin.isTTY)) {
    process.stdin.on('end', () => stop('stdin closed'));
    process.stdin.on('error', () => stop('stdin error'));
    process.stdin.on('data', () => {});
    process.stdin.resume();
  }
}

main().catch((err) => {
  console.error(`server.mjs: ${err.stack ?? err}`);
  process.exit(1);
});
