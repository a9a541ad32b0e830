// Interop: the Token Status List a running mayfly server publishes, read by npm packages nobody
// here wrote.
//
// - `@sd-jwt/jwt-status-list` reads each token's `status.status_list` reference and decodes the
//   list (`lst`: ZLIB, base64url, least significant bit first).
// - `jose` verifies the list token (typ statuslist+jwt, signature against the server's jwks_uri,
//   sub = the list's URI, exp/iat).
//
// Polls the list (every 100 ms) until the revoked token's bit is set, for at most
// MAYFLY_WITHIN_MS after start; then checks the active token's bit is clear. Prints one JSON
// line with what it saw; exits non-zero on any failure.
//
// Run by tests/e2e/status_list.rs; by hand, set:
//   MAYFLY_ISSUER         e.g. http://127.0.0.1:41234
//   MAYFLY_REVOKED_TOKEN  an access token revoked at that server
//   MAYFLY_ACTIVE_TOKEN   an access token that is not
//   MAYFLY_WITHIN_MS      how long the revocation may take to show in the list
// then `node status-list-check.mjs` in this directory.

import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';

import { getListFromStatusListJWT, getStatusListFromJWT } from '@sd-jwt/jwt-status-list';
import * as jose from 'jose';

function env(name) {
  const value = process.env[name];
  assert.ok(value, `environment variable ${name} must be set (see the header of this file)`);
  return value;
}

const issuer = env('MAYFLY_ISSUER');
const withinMs = Number(env('MAYFLY_WITHIN_MS'));
const started = Date.now();

const mdResp = await fetch(`${issuer}/.well-known/oauth-authorization-server`);
assert.equal(mdResp.status, 200);
const md = await mdResp.json();
const jwks = jose.createRemoteJWKSet(new URL(md.jwks_uri));

/** Fetch a list token, verify it with jose, decode it with @sd-jwt/jwt-status-list. */
async function fetchList(uri) {
  assert.ok(uri.startsWith(`${issuer}/statuslists/`), `list URI ${uri} is not the issuer's`);
  const resp = await fetch(uri, { headers: { accept: 'application/statuslist+jwt' } });
  assert.equal(resp.status, 200, `GET ${uri}`);
  const type = (resp.headers.get('content-type') ?? '').split(';')[0].trim();
  assert.equal(type, 'application/statuslist+jwt');
  const jwt = await resp.text();
  const { payload, protectedHeader } = await jose.jwtVerify(jwt, jwks, {
    typ: 'statuslist+jwt',
    subject: uri,
    requiredClaims: ['iat', 'exp'],
  });
  assert.ok(protectedHeader.kid, 'the list token names its key');
  assert.ok(payload.ttl > 0, 'the list token has a ttl');
  assert.equal(payload.status_list.bits, 1);
  return { list: getListFromStatusListJWT(jwt), payload, alg: protectedHeader.alg };
}

const revoked = getStatusListFromJWT(env('MAYFLY_REVOKED_TOKEN'));
const active = getStatusListFromJWT(env('MAYFLY_ACTIVE_TOKEN'));
let fetches = 0;
let seen;
for (;;) {
  const got = await fetchList(revoked.uri);
  fetches += 1;
  if (got.list.getStatus(revoked.idx) === 1) {
    seen = got;
    break;
  }
  assert.ok(
    Date.now() - started < withinMs,
    `the revoked token's bit (list ${revoked.uri}, index ${revoked.idx}) is still clear after ${withinMs} ms`,
  );
  await sleep(100);
}
const seenAfterMs = Date.now() - started;
const activeList = active.uri === revoked.uri ? seen : await fetchList(active.uri);
assert.equal(activeList.list.getStatus(active.idx), 0, "the active token's bit is set");

console.log(
  JSON.stringify({
    revoked: { uri: revoked.uri, idx: revoked.idx, status: 1 },
    active: { uri: active.uri, idx: active.idx, status: 0 },
    alg: seen.alg,
    ttl: seen.payload.ttl,
    entries: seen.list.statusList.length,
    fetches,
    seen_after_ms: seenAfterMs,
  }),
);
