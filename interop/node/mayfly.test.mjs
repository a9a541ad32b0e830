// Interop: drive a running mayfly server with third-party npm clients nobody here wrote.
//
// - `openid-client` discovers the server from RFC 8414 metadata and gets a token with the
//   client_credentials grant, authenticating with private_key_jwt (RFC 7523) and asking for a
//   resource (RFC 8707); it also introspects (RFC 7662) and revokes (RFC 7009) that token.
// - `jose` verifies the access token as an RFC 9068 JWT against the server's jwks_uri.
//
// The Rust e2e test `tests/e2e/interop_node.rs` starts the server and runs `node --test` here.
// To run by hand against a server you started yourself, set:
//   MAYFLY_ISSUER      e.g. http://127.0.0.1:41234
//   MAYFLY_CLIENT_ID   the registered client id
//   MAYFLY_CLIENT_KEY  path to the client's private JWK (JSON with kid and alg)
//   MAYFLY_OTHER_KEY   path to another private JWK that is NOT registered for this client
//   MAYFLY_AUDIENCE    the resource (RFC 8707) to ask for; becomes the token's aud
//   MAYFLY_SCOPE       space-separated scopes to ask for
//   MAYFLY_SUBJECT_ISSUER  `iss` of a trusted Kubernetes-like issuer (preset "kubernetes",
//                          audience "mayfly") whose policy lets namespace `payments` read MAYFLY_AUDIENCE
//   MAYFLY_SUBJECT_KEY     path to that issuer's private JWK
//
// - token exchange (RFC 8693): jose signs a Kubernetes projected service-account token and
//   openid-client's `genericGrantRequest` exchanges it, with and without client authentication.

import { readFileSync } from 'node:fs';
import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';

import * as client from 'openid-client';
import * as jose from 'jose';

const TIMEOUT = 30_000;

function env(name) {
  const value = process.env[name];
  assert.ok(value, `environment variable ${name} must be set (see the header of this file)`);
  return value;
}

/** Read a private JWK file and import it as the `{ key, kid }` openid-client wants. */
async function privateKey(path) {
  const jwk = JSON.parse(readFileSync(path, 'utf8'));
  assert.ok(jwk.kid, `${path}: private JWK has no "kid"`);
  assert.ok(jwk.alg, `${path}: private JWK has no "alg"`);
  assert.ok(jwk.d, `${path}: JWK is not a private key`);
  const key = await jose.importJWK(jwk, jwk.alg);
  return { key, kid: jwk.kid, alg: jwk.alg };
}

/** Discover the server (RFC 8414 path) with `auth` as the client's token endpoint authentication. */
function discover(issuer, clientId, auth) {
  return client.discovery(new URL(issuer), clientId, undefined, auth, {
    algorithm: 'oauth2',
    execute: [client.allowInsecureRequests],
    timeout: 10,
  });
}

/** A ResponseBodyError from openid-client carrying this OAuth `error` code. */
function oauthError(code) {
  return (err) => {
    assert.ok(
      err instanceof client.ResponseBodyError,
      `expected ResponseBodyError(${code}), got ${err?.constructor?.name}: ${err?.message}` +
        (err?.cause ? ` cause=${JSON.stringify(err.cause)}` : ''),
    );
    assert.equal(err.error, code, `error_description: ${err.error_description}`);
    return true;
  };
}

describe('mayfly with openid-client and jose', () => {
  let issuer, clientId, audience, scope;
  let key, otherKey;
  let config;

  before(async () => {
    issuer = env('MAYFLY_ISSUER');
    clientId = env('MAYFLY_CLIENT_ID');
    audience = env('MAYFLY_AUDIENCE');
    scope = env('MAYFLY_SCOPE');
    key = await privateKey(env('MAYFLY_CLIENT_KEY'));
    otherKey = await privateKey(env('MAYFLY_OTHER_KEY'));
    config = await discover(issuer, clientId, client.PrivateKeyJwt({ key: key.key, kid: key.kid }));
  });

  const grant = () => client.clientCredentialsGrant(config, { scope, resource: audience });

  test('metadata discovered over RFC 8414 advertises the endpoints and private_key_jwt', { timeout: TIMEOUT }, () => {
    const md = config.serverMetadata();
    assert.equal(new URL(md.issuer).href, new URL(issuer).href);
    for (const field of ['token_endpoint', 'introspection_endpoint', 'revocation_endpoint', 'jwks_uri']) {
      assert.equal(typeof md[field], 'string', `metadata has no ${field}`);
      assert.equal(new URL(md[field]).origin, new URL(issuer).origin, `${field} is not on the issuer's origin`);
    }
    assert.ok(md.token_endpoint_auth_methods_supported?.includes('private_key_jwt'));
    assert.ok(md.token_endpoint_auth_signing_alg_values_supported?.includes(key.alg));
  });

  test('client_credentials with private_key_jwt returns a bearer token', { timeout: TIMEOUT }, async () => {
    const tokens = await grant();
    assert.equal(typeof tokens.access_token, 'string');
    assert.equal(tokens.token_type.toLowerCase(), 'bearer');
    assert.equal(typeof tokens.expires_in, 'number');
    assert.ok(tokens.expires_in > 0 && tokens.expires_in <= 300, `expires_in = ${tokens.expires_in}`);
    assert.deepEqual(tokens.scope.split(' ').sort(), scope.split(' ').sort());
  });

  test('jose verifies the access token as an RFC 9068 JWT against jwks_uri', { timeout: TIMEOUT }, async () => {
    const { access_token } = await grant();
    const md = config.serverMetadata();
    const jwks = jose.createRemoteJWKSet(new URL(md.jwks_uri));
    const { payload, protectedHeader } = await jose.jwtVerify(access_token, jwks, {
      issuer: md.issuer,
      audience,
      typ: 'at+jwt',
      requiredClaims: ['iss', 'sub', 'aud', 'exp', 'iat', 'jti', 'client_id', 'scope'],
    });
    assert.ok(protectedHeader.kid, 'access token header has no kid');
    assert.equal(payload.client_id, clientId);
    assert.deepEqual(payload.scope.split(' ').sort(), scope.split(' ').sort());
    assert.equal(typeof payload.jti, 'string');
    assert.ok(payload.jti.length > 0);
    assert.equal(typeof payload.sub, 'string');
    assert.ok(payload.sub.length > 0);
    assert.ok(payload.exp - payload.iat <= 300, `lifetime ${payload.exp - payload.iat}s exceeds 300s`);
    assert.ok(payload.exp > payload.iat);
  });

  test('each token has its own jti', { timeout: TIMEOUT }, async () => {
    const a = jose.decodeJwt((await grant()).access_token);
    const b = jose.decodeJwt((await grant()).access_token);
    assert.notEqual(a.jti, b.jti);
  });

  test('introspection says active, revocation succeeds, then introspection says inactive', { timeout: TIMEOUT }, async () => {
    const { access_token } = await grant();

    const live = await client.tokenIntrospection(config, access_token);
    assert.equal(live.active, true);
    assert.equal(live.client_id, clientId);
    assert.deepEqual(live.scope.split(' ').sort(), scope.split(' ').sort());

    await client.tokenRevocation(config, access_token);

    const revoked = await client.tokenIntrospection(config, access_token);
    assert.equal(revoked.active, false);
  });

  describe('a client assertion signed with a key not registered for the client', () => {
    test('under its own kid is invalid_client', { timeout: TIMEOUT }, async () => {
      const wrong = await discover(issuer, clientId, client.PrivateKeyJwt({ key: otherKey.key, kid: otherKey.kid }));
      await assert.rejects(
        client.clientCredentialsGrant(wrong, { scope, resource: audience }),
        oauthError('invalid_client'),
      );
    });

    test("under the registered key's kid is invalid_client", { timeout: TIMEOUT }, async () => {
      const forged = await discover(issuer, clientId, client.PrivateKeyJwt({ key: otherKey.key, kid: key.kid }));
      await assert.rejects(
        client.clientCredentialsGrant(forged, { scope, resource: audience }),
        oauthError('invalid_client'),
      );
    });
  });

  describe('token exchange (RFC 8693) through genericGrantRequest', () => {
    const EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
    const JWT = 'urn:ietf:params:oauth:token-type:jwt';
    let subjectKey, subjectIssuer;

    before(async () => {
      subjectIssuer = env('MAYFLY_SUBJECT_ISSUER');
      subjectKey = await privateKey(env('MAYFLY_SUBJECT_KEY'));
    });

    /** A Kubernetes projected service-account token for namespace `ns`, signed by jose. */
    const serviceAccountToken = (ns, iss = subjectIssuer) =>
      new jose.SignJWT({
        'kubernetes.io': {
          namespace: ns,
          pod: { name: 'api-7d9f8b6c5-x2k4q', uid: '1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d' },
          serviceaccount: { name: 'api', uid: '9e8d7c6b-5a49-4382-9716-0f1e2d3c4b5a' },
        },
      })
        .setProtectedHeader({ alg: subjectKey.alg, kid: subjectKey.kid })
        .setIssuer(iss)
        .setSubject(`system:serviceaccount:${ns}:api`)
        .setAudience(['mayfly'])
        .setIssuedAt()
        .setNotBefore('0s')
        .setExpirationTime('10m')
        .setJti(crypto.randomUUID())
        .sign(subjectKey.key);

    const verify = async (token) => {
      const md = config.serverMetadata();
      return jose.jwtVerify(token, jose.createRemoteJWKSet(new URL(md.jwks_uri)), {
        issuer: md.issuer,
        audience,
        typ: 'at+jwt',
      });
    };

    test('the metadata advertises the token-exchange grant', { timeout: TIMEOUT }, () => {
      assert.ok(config.serverMetadata().grant_types_supported?.includes(EXCHANGE));
    });

    test('an authenticated client exchanges a workload token for one scoped to the workload', { timeout: TIMEOUT }, async () => {
      const tokens = await client.genericGrantRequest(config, EXCHANGE, {
        subject_token: await serviceAccountToken('payments'),
        subject_token_type: JWT,
        audience,
        scope: 'read',
      });
      assert.equal(tokens.issued_token_type, 'urn:ietf:params:oauth:token-type:access_token');
      assert.equal(tokens.token_type.toLowerCase(), 'bearer');
      const { payload } = await verify(tokens.access_token);
      assert.equal(payload.sub, 'spiffe://k8s.example.org/ns/payments/sa/api');
      assert.equal(payload.client_id, clientId);
      assert.equal(payload.scope, 'read');
    });

    test('the subject token alone is the credential (no client authentication)', { timeout: TIMEOUT }, async () => {
      const anonymous = await discover(issuer, 'workload', client.None());
      const tokens = await client.genericGrantRequest(anonymous, EXCHANGE, {
        subject_token: await serviceAccountToken('payments'),
        subject_token_type: JWT,
        audience,
        scope: 'read',
      });
      const { payload } = await verify(tokens.access_token);
      assert.equal(payload.sub, 'spiffe://k8s.example.org/ns/payments/sa/api');
    });

    test('policy refuses another namespace with invalid_target', { timeout: TIMEOUT }, async () => {
      await assert.rejects(
        client.genericGrantRequest(config, EXCHANGE, {
          subject_token: await serviceAccountToken('billing'),
          subject_token_type: JWT,
          audience,
          scope: 'read',
        }),
        oauthError('invalid_target'),
      );
    });

    test('a token from an untrusted issuer is invalid_request', { timeout: TIMEOUT }, async () => {
      await assert.rejects(
        client.genericGrantRequest(config, EXCHANGE, {
          subject_token: await serviceAccountToken('payments', 'https://evil.example'),
          subject_token_type: JWT,
          audience,
        }),
        oauthError('invalid_request'),
      );
    });
  });
});
