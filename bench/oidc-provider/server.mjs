// The peer server for mayfly's load benchmark (docs/PERFORMANCE.md).
//
// oidc-provider configured the way mayfly is: one client authenticating with private_key_jwt
// (ES256 assertions), the client_credentials grant only, JWT access tokens (RFC 9068) signed with
// EdDSA through the resource indicators feature, a 5-minute lifetime, and the default in-memory
// adapter (which also keeps the assertion jti replay cache, as mayfly does).
//
// Usage: NODE_ENV=production node server.mjs --jwks /path/client.jwks.json [--port 8081]
//        [--client-id bench-client]
// Prints "listening on http://127.0.0.1:PORT" on stderr once it accepts connections.

import { generateKeyPairSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

const { values: args } = parseArgs({
  options: {
    jwks: { type: 'string' },
    port: { type: 'string', default: '8081' },
    host: { type: 'string', default: '127.0.0.1' },
    'client-id': { type: 'string', default: 'bench-client' },
  },
});
if (!args.jwks) {
  console.error('usage: node server.mjs --jwks client.jwks.json [--port 8081] [--client-id ID]');
  process.exit(2);
}

const AUDIENCE = 'https://api.example.test';
const TTL_SECONDS = 300;
const issuer = `http://${args.host}:${args.port}`;

// A fresh Ed25519 token-signing key per run, as mayfly generates its own on first start.
const { privateKey } = generateKeyPairSync('ed25519');
const signingJwk = { ...privateKey.export({ format: 'jwk' }), kid: 'bench-eddsa', use: 'sig', alg: 'EdDSA' };

const clientJwks = JSON.parse(readFileSync(args.jwks, 'utf8'));

const provider = new Provider(issuer, {
  jwks: { keys: [signingJwk] },
  clients: [
    {
      client_id: args['client-id'],
      token_endpoint_auth_method: 'private_key_jwt',
      token_endpoint_auth_signing_alg: 'ES256',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      scope: 'read write',
      // Only an EdDSA key is in the provider's keystore; the client's default (RS256) would fail
      // metadata validation.
      id_token_signed_response_alg: 'EdDSA',
      jwks: clientJwks,
    },
  ],
  scopes: ['read', 'write'],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: false },
    revocation: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => AUDIENCE,
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, resourceIndicator) => {
        if (resourceIndicator !== AUDIENCE) {
          // Same outcome as mayfly for an unknown audience: invalid_target.
          throw new Provider.errors.InvalidTarget();
        }
        return {
          scope: 'read write',
          audience: AUDIENCE,
          accessTokenTTL: TTL_SECONDS,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'EdDSA' } },
        };
      },
    },
  },
  ttl: {
    ClientCredentials: TTL_SECONDS,
  },
});

const server = provider.listen(Number(args.port), args.host, () => {
  console.error(`listening on ${issuer} (oidc-provider, token endpoint ${issuer}/token)`);
});

function shutdown() {
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
