#!/usr/bin/env python3
"""Labelled, synthetic secret-scanning corpus for `mayfly scan`.

    python3 bench/scan/corpus.py --out DIR [--seed N]

Writes a deterministic tree of realistic files (source in several languages, .env, YAML/JSON
config, Dockerfile, shell, CI logs, Markdown, Terraform, .npmrc/.pypirc, Kubernetes secrets,
lockfiles, minified JS) with:

* positives: format-valid *fake* secrets of every rule type (right prefix, length, alphabet and,
  where the format has one, checksum: GitHub/npm CRC32-base62, age bech32, PGP CRC24), drawn from
  a seeded PRNG. None is real; none is a provider's documented example value.
* hard negatives: documented example keys, placeholders, template variables, hashes, UUIDs,
  public keys and certificates, lockfile integrity strings, minified code, base64 data,
  random-looking strings not assigned to secret-ish names, GitHub/npm tokens with a wrong
  checksum, public identifiers (publishable keys), encrypted blobs, non-secret values of
  secret-ish names.
* DIR/labels.json: {"positives": [{file, line, end_line, type}], "negatives": [{file, line,
  end_line, kind}]} with 1-based lines; DIR/README.

Python 3.11 standard library only. Output is byte-identical for the same --seed.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import shutil
import string
import struct
import sys
import uuid
import zlib

DIGITS = string.digits
LOWER = string.ascii_lowercase
UPPER = string.ascii_uppercase
ALNUM = UPPER + LOWER + DIGITS
B62 = DIGITS + UPPER + LOWER  # GitHub's base62 alphabet order for the checksum
HEX = "0123456789abcdef"
UHEX = HEX.upper()
B64URL = ALNUM + "-_"
B64 = ALNUM + "+/"
BASE32 = UPPER + "234567"
BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"

# --------------------------------------------------------------------------------------------
# Random value helpers
# --------------------------------------------------------------------------------------------


class R:
    """Thin wrapper around random.Random with string helpers."""

    def __init__(self, seed: int):
        self.r = random.Random(seed)

    def s(self, alphabet: str, n: int) -> str:
        # Re-draw until the string mixes classes like a real random token would (avoids e.g. an
        # all-letter 'random' value that an entropy gate would legitimately reject).
        while True:
            out = "".join(self.r.choice(alphabet) for _ in range(n))
            if n < 12 or alphabet in (HEX, UHEX, DIGITS, BECH32, LOWER, UPPER, UPPER + LOWER):
                return out
            classes = sum(any(c in cls for c in out) for cls in (UPPER, LOWER, DIGITS))
            want = sum(any(c in cls for c in alphabet) for cls in (UPPER, LOWER, DIGITS))
            if classes >= min(want, 3) and not _looks_placeholder(out):
                return out

    def b(self, n: int) -> bytes:
        return bytes(self.r.getrandbits(8) for _ in range(n))

    def i(self, a: int, b: int) -> int:
        return self.r.randint(a, b)

    def choice(self, seq):
        return self.r.choice(seq)

    def shuffle(self, seq):
        self.r.shuffle(seq)

    def random(self) -> float:
        return self.r.random()

    def uuid(self) -> str:
        return str(uuid.UUID(bytes=self.b(16), version=4))

    def digits(self, n: int) -> str:
        return str(self.i(1, 9)) + self.s(DIGITS, n - 1)


def _looks_placeholder(v: str) -> bool:
    low = v.lower()
    return any(w in low for w in ("example", "xxxx", "test", "fake", "dummy", "sample", "0000"))


def b62(n: int) -> str:
    out = ""
    while n:
        out = B62[n % 62] + out
        n //= 62
    return out


def gh_checksum(body: str) -> str:
    """GitHub / npm token checksum: CRC32 of the 30 random chars, base62, left-padded to 6."""
    return b62(zlib.crc32(body.encode()) & 0xFFFFFFFF).rjust(6, "0")


def gh_token(r: R, prefix: str) -> str:
    body = r.s(ALNUM, 30)
    return prefix + body + gh_checksum(body)


def gh_token_bad(r: R, prefix: str) -> str:
    body = r.s(ALNUM, 30)
    good = gh_checksum(body)
    while True:
        bad = r.s(ALNUM, 6)
        if bad != good:
            return prefix + body + bad


def b64u(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def b64s(b: bytes) -> str:
    return base64.b64encode(b).decode()


# ---- bech32 (age) ---------------------------------------------------------------------------


def _bech32_polymod(values):
    gen = [0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3]
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            chk ^= gen[i] if ((top >> i) & 1) else 0
    return chk


def bech32_encode(hrp: str, data: bytes) -> str:
    acc = bits = 0
    five = []
    for byte in data:
        acc = (acc << 8) | byte
        bits += 8
        while bits >= 5:
            bits -= 5
            five.append((acc >> bits) & 31)
    if bits:
        five.append((acc << (5 - bits)) & 31)
    hrp_exp = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    pm = _bech32_polymod(hrp_exp + five + [0] * 6) ^ 1
    chk = [(pm >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(BECH32[d] for d in five + chk)


# ---- DER / PEM ------------------------------------------------------------------------------


def der_len(n: int) -> bytes:
    if n < 128:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def der(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + der_len(len(body)) + body


def der_int_rand(r: R, nbytes: int, odd=False) -> bytes:
    b = bytearray(r.b(nbytes))
    b[0] |= 0x80
    if odd:
        b[-1] |= 1
    return der(0x02, b"\x00" + bytes(b))


def der_int_small(v: int) -> bytes:
    b = v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big")
    return der(0x02, b)


def rsa_der(r: R, bits=2048) -> bytes:
    n = bits // 8
    h = n // 2
    parts = [der_int_small(0), der_int_rand(r, n, True), der_int_small(65537), der_int_rand(r, n - 1),
             der_int_rand(r, h, True), der_int_rand(r, h, True), der_int_rand(r, h), der_int_rand(r, h),
             der_int_rand(r, h)]
    return der(0x30, b"".join(parts))


OID_P256 = bytes.fromhex("06082a8648ce3d030107")
OID_RSA = bytes.fromhex("06092a864886f70d010101")
OID_EC = bytes.fromhex("06072a8648ce3d0201")


def ec_der(r: R) -> bytes:
    body = der_int_small(1) + der(0x04, r.b(32)) + der(0xA0, OID_P256) + der(0xA1, der(0x03, b"\x00\x04" + r.b(64)))
    return der(0x30, body)


def dsa_der(r: R) -> bytes:
    parts = [der_int_small(0), der_int_rand(r, 256, True), der_int_rand(r, 32, True), der_int_rand(r, 256),
             der_int_rand(r, 256), der_int_rand(r, 32)]
    return der(0x30, b"".join(parts))


def pkcs8_der(r: R, ec=False) -> bytes:
    if ec:
        alg = der(0x30, OID_EC + OID_P256)
        inner = ec_der(r)
    else:
        alg = der(0x30, OID_RSA + b"\x05\x00")
        inner = rsa_der(r)
    return der(0x30, der_int_small(0) + alg + der(0x04, inner))


def pkcs8_encrypted_der(r: R) -> bytes:
    # EncryptedPrivateKeyInfo with PBES2 OID + opaque params, random ciphertext.
    pbes2 = bytes.fromhex("06092a864886f70d01050d")
    params = der(0x30, der(0x30, bytes.fromhex("06092a864886f70d01050c") + der(0x30, der(0x04, r.b(8)) + der_int_small(2048)))
                 + der(0x30, bytes.fromhex("0609608648016503040102") + der(0x04, r.b(16))))
    return der(0x30, der(0x30, pbes2 + params) + der(0x04, r.b(1216)))


def pem_lines(label: str, blob: bytes, width=64, headers=None) -> list[str]:
    b = b64s(blob)
    out = [f"-----BEGIN {label}-----"]
    if headers:
        out += headers + [""]
    out += [b[i:i + width] for i in range(0, len(b), width)]
    out.append(f"-----END {label}-----")
    return out


def sshstr(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def openssh_private(r: R, encrypted=False) -> list[str]:
    pk = r.b(32)
    pub = sshstr(b"ssh-ed25519") + sshstr(pk)
    check = r.b(4)
    priv = check + check + sshstr(b"ssh-ed25519") + sshstr(pk) + sshstr(r.b(32) + pk) + sshstr(b"deploy@build-01")
    pad = 1
    while len(priv) % 8:
        priv += bytes([pad])
        pad += 1
    if encrypted:
        head = sshstr(b"aes256-ctr") + sshstr(b"bcrypt") + sshstr(sshstr(r.b(16)) + struct.pack(">I", 16))
        priv = r.b(len(priv) + 16)
    else:
        head = sshstr(b"none") + sshstr(b"none") + sshstr(b"")
    blob = b"openssh-key-v1\x00" + head + struct.pack(">I", 1) + sshstr(pub) + sshstr(priv)
    return pem_lines("OPENSSH PRIVATE KEY", blob, width=70)


def putty_private(r: R, v3=True) -> list[str]:
    pk = r.b(32)
    pub = b64s(sshstr(b"ssh-ed25519") + sshstr(pk))
    priv = b64s(sshstr(r.b(32)))
    pl = [pub[i:i + 64] for i in range(0, len(pub), 64)]
    if v3:
        head = ["PuTTY-User-Key-File-3: ssh-ed25519", "Encryption: none", "Comment: eddsa-key-20240311"]
        mac = r.s(HEX, 64)
    else:
        head = ["PuTTY-User-Key-File-2: ssh-ed25519", "Encryption: none", "Comment: imported-openssh-key"]
        mac = r.s(HEX, 40)
    return head + [f"Public-Lines: {len(pl)}"] + pl + ["Private-Lines: 1", priv, f"Private-MAC: {mac}"]


def crc24(data: bytes) -> int:
    crc = 0xB704CE
    for byte in data:
        crc ^= byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return crc & 0xFFFFFF


def pgp_block(r: R, private=True) -> list[str]:
    body = bytearray()
    # old-format packet, tag 5 (secret key) or 6 (public key), two-octet length
    tag = 0x95 if private else 0x99
    payload = b"\x04" + struct.pack(">I", 1700000000 + r.i(0, 30000000)) + b"\x01" + r.b(900 if private else 270)
    body += bytes([tag]) + struct.pack(">H", len(payload)) + payload
    b = b64s(bytes(body))
    kind = "PRIVATE" if private else "PUBLIC"
    out = [f"-----BEGIN PGP {kind} KEY BLOCK-----", ""]
    out += [b[i:i + 64] for i in range(0, len(b), 64)]
    out.append("=" + b64s(crc24(bytes(body)).to_bytes(3, "big")))
    out.append(f"-----END PGP {kind} KEY BLOCK-----")
    return out


def ssh_public(r: R, kind=None) -> str:
    kind = kind or r.choice(["rsa", "ed25519"])
    if kind == "rsa":
        blob = sshstr(b"ssh-rsa") + sshstr(b"\x01\x00\x01") + sshstr(b"\x00" + r.b(256))
        return "ssh-rsa " + b64s(blob)
    return "ssh-ed25519 " + b64s(sshstr(b"ssh-ed25519") + sshstr(r.b(32)))


def cert_lines(r: R) -> list[str]:
    tbs = der(0x30, der(0xA0, der_int_small(2)) + der_int_rand(r, 16) + der(0x30, bytes.fromhex("06092a864886f70d01010b0500"))
              + r.b(700))
    return pem_lines("CERTIFICATE", der(0x30, tbs + r.b(270)))


def public_key_pem(r: R) -> list[str]:
    spki = der(0x30, der(0x30, OID_RSA + b"\x05\x00") + der(0x03, b"\x00" + der(0x30, der_int_rand(r, 256, True) + der_int_small(65537))))
    return pem_lines("PUBLIC KEY", spki)


# --------------------------------------------------------------------------------------------
# Secret generators: type id -> (generator, env-style names, contextual?)
# contextual types are only placed next to a name that says what they are.
# --------------------------------------------------------------------------------------------


def g_jwt(r: R) -> str:
    alg = r.choice(["HS256", "RS256", "ES256"])
    head = b64u(json.dumps({"alg": alg, "typ": "JWT"}, separators=(",", ":")).encode())
    iat = 1700000000 + r.i(0, 40000000)
    claims = {"sub": r.uuid(), "iss": r.choice(["https://auth.acme-corp.io/", "billing-api", "https://login.tenant.app"]),
              "iat": iat, "exp": iat + r.choice([3600, 86400, 604800]), "scope": r.choice(["read write", "admin", "orders:read"])}
    body = b64u(json.dumps(claims, separators=(",", ":")).encode())
    sig = b64u(r.b({"HS256": 32, "RS256": 256, "ES256": 64}[alg]))
    return f"{head}.{body}.{sig}"


def g_db_url(r: R) -> str:
    pw = r.s(ALNUM, r.i(16, 28))
    user = r.choice(["app", "billing", "svc_orders", "admin", "reporting"])
    host = r.choice(["db.internal.acme-corp.io", "10.20.3.14", "pg-prod-1.cluster-c9x2.eu-west-1.rds.amazonaws.com",
                     "mysql.payments.svc", "cache-01.prod.local"])
    kind = r.choice(["postgres", "postgresql", "mysql", "mongodb+srv", "redis", "amqp", "postgres", "mongodb"])
    if kind.startswith("postgres"):
        return f"{kind}://{user}:{pw}@{host}:5432/{r.choice(['orders', 'billing', 'app_prod'])}?sslmode=require"
    if kind == "mysql":
        return f"mysql://{user}:{pw}@{host}:3306/{r.choice(['shop', 'wordpress', 'crm'])}"
    if kind == "mongodb+srv":
        return f"mongodb+srv://{user}:{pw}@cluster0.{r.s(LOWER + DIGITS, 5)}.mongodb.net/{r.choice(['events', 'users'])}?retryWrites=true&w=majority"
    if kind == "mongodb":
        return f"mongodb://{user}:{pw}@mongo-0.mongo.svc:27017,mongo-1.mongo.svc:27017/admin?replicaSet=rs0"
    if kind == "redis":
        return f"redis://default:{pw}@{host}:6379/0"
    return f"amqp://{user}:{pw}@rabbitmq.{r.choice(['prod', 'staging'])}.svc:5672/{r.choice(['jobs', '%2F'])}"


def g_basic_url(r: R) -> str:
    pw = r.s(ALNUM + "-_", r.i(14, 24))
    user = r.choice(["deploy", "ci-bot", "jenkins", "admin", "releaser", "mirror"])
    host = r.choice(["nexus.acme-corp.io/repository/pypi/simple", "artifacts.internal.example.net/api/npm/npm-local/",
                     "git.corp-tools.io/platform/infra.git", "registry.build.local:8443/v2/", "jenkins.ops.acme-corp.io/job/release/build",
                     "grafana.monitoring.local/api/dashboards"])
    return f"https://{user}:{pw}@{host}"


def g_generic(r: R) -> str:
    k = r.i(0, 4)
    if k == 0:
        return r.s(ALNUM, r.i(24, 40))
    if k == 1:
        return r.s(HEX, r.choice([32, 40, 64]))
    if k == 2:
        return b64s(r.b(r.choice([24, 32, 48])))
    if k == 3:
        return r.s(ALNUM + "!#%&*+-=?@^_", r.i(18, 28))
    return r.s(ALNUM + "-_", r.i(32, 48))


def g_openai(r: R) -> str:
    if r.random() < 0.3:
        return "sk-" + r.s(ALNUM, 20) + "T3BlbkFJ" + r.s(ALNUM, 20)
    pre = r.choice(["sk-proj-", "sk-proj-", "sk-svcacct-"])
    return pre + r.s(B64URL, 74) + "T3BlbkFJ" + r.s(B64URL, 74)


def g_sentry(r: R) -> str:
    if r.random() < 0.5:
        return "sntryu_" + r.s(HEX, 64)
    payload = {"iat": 1700000000 + r.i(0, 40000000), "url": "https://sentry.io", "region_url": "https://us.sentry.io",
               "org": r.choice(["acme-corp", "payments-team", "widgets-inc"])}
    return "sntrys_" + b64s(json.dumps(payload, separators=(",", ":")).encode()).rstrip("=") + "_" + r.s(B64URL.replace("-", ""), 43)


def g_grafana_cloud(r: R) -> str:
    payload = {"o": r.digits(6), "n": r.choice(["stack-ro", "deploy-token", "alloy"]) + "-" + r.s(LOWER, 4),
               "k": r.s(ALNUM, 24), "m": {"r": r.choice(["prod-us-east-0", "prod-eu-west-2"])}}
    return "glc_" + b64s(json.dumps(payload, separators=(",", ":")).encode())


def g_mapbox(r: R) -> str:
    payload = b64u(json.dumps({"u": r.choice(["acme-maps", "fleetview", "geo-team"]), "a": r.s(LOWER + DIGITS, 25)}, separators=(",", ":")).encode())
    return f"sk.{payload}.{r.s(B64URL, 22)}"


def g_nuget(r: R) -> str:
    a = LOWER + DIGITS
    return ("oy2" + r.choice("abcdefghijklmnop") + r.s(a, 15) + r.choice("aq") + r.s(a, 11) + r.choice("eu")
            + r.choice("bdfhjlnprtvxz357") + r.choice("abcdefghijklmnop") + r.s(a, 11) + r.choice("aeimquy4"))


def g_discord_bot(r: R) -> str:
    uid = str(r.i(10 ** 17, 10 ** 18 * 2))
    return b64s(uid.encode()).rstrip("=") + "." + r.s(B64URL, 6) + "." + r.s(B64URL, r.choice([27, 38]))


def g_vault(r: R) -> str:
    return "hvs.CAESI" + r.s(B64URL, 86) + "Gh4KHGh2cy4" + r.s(ALNUM, 24)


def g_fly(r: R) -> str:
    if r.random() < 0.4:
        return "fo1_" + r.s(B64URL, 43)
    return "FlyV1 fm2_" + b64s(r.b(r.choice([180, 240]))).rstrip("=")


def g_atlassian(r: R) -> str:
    return "ATATT3xFfGF0" + r.s(B64URL, 171) + "=" + r.s(UHEX, 8)


def g_google_oauth(r: R) -> str:
    return "ya29.a0" + r.s(B64URL, r.i(150, 210))


def g_age(r: R) -> str:
    return bech32_encode("age-secret-key-", r.b(32)).upper()


def g_square_access(r: R) -> str:
    return "EAAA" + r.s(B64URL, 60) if r.random() < 0.6 else "sq0atp-" + r.s(B64URL, 22)


def g_stripe(prefix):
    def f(r: R) -> str:
        if r.random() < 0.7:
            return prefix + "51" + r.s(ALNUM, 97)
        return prefix + r.s(ALNUM, 24)
    return f


def g_slack_bot(r: R) -> str:
    return f"xoxb-{r.digits(r.choice([11, 12]))}-{r.digits(13)}-{r.s(ALNUM, 24)}"


def g_slack_user(r: R) -> str:
    return f"xoxp-{r.digits(12)}-{r.digits(12)}-{r.digits(13)}-{r.s(HEX, 32)}"


def g_slack_app(r: R) -> str:
    return f"xapp-1-A{r.s(UPPER + DIGITS, 10)}-{r.digits(13)}-{r.s(HEX, 64)}"


def g_slack_webhook(r: R) -> str:
    return f"https://hooks.slack.com/services/T{r.s(UPPER + DIGITS, 8)}/B{r.s(UPPER + DIGITS, 10)}/{r.s(ALNUM, 24)}"


def g_discord_webhook(r: R) -> str:
    return f"https://discord.com/api/webhooks/{r.digits(19)}/{r.s(B64URL, 68)}"


def g_teams_webhook(r: R) -> str:
    tenant = r.choice(["acmecorp", "contoso-it", "widgets"])
    return (f"https://{tenant}.webhook.office.com/webhookb2/{r.uuid()}@{r.uuid()}/IncomingWebhook/"
            f"{r.s(HEX, 32)}/{r.uuid()}")


def g_telegram(r: R) -> str:
    return f"{r.digits(r.choice([9, 10]))}:AA{r.s(B64URL, 33)}"


GEN: dict[str, tuple] = {
    # type id: (generator, names, contextual)
    "aws-access-key-id": (lambda r: r.choice(["AKIA", "AKIA", "AKIA", "ASIA"]) + r.s(BASE32, 16),
                          ["AWS_ACCESS_KEY_ID", "aws_access_key_id", "AccessKeyId"], False),
    "aws-secret-access-key": (lambda r: r.s(B64, 40), ["AWS_SECRET_ACCESS_KEY", "aws_secret_access_key", "SecretAccessKey"], True),
    "gcp-api-key": (lambda r: "AIza" + r.s(B64URL, 35), ["GOOGLE_API_KEY", "maps_api_key", "GCP_API_KEY"], False),
    "gcp-oauth-client-secret": (lambda r: "GOCSPX-" + r.s(B64URL, 28), ["GOOGLE_CLIENT_SECRET", "client_secret", "oauth_client_secret"], False),
    "azure-storage-account-key": (lambda r: b64s(r.b(64)), ["AZURE_STORAGE_KEY", "storage_account_key", "AccountKey"], True),
    "azure-ad-client-secret": (lambda r: r.s(ALNUM, 3) + "8Q~" + r.s(ALNUM + "_~.-", 34), ["AZURE_CLIENT_SECRET", "client_secret", "aad_client_secret"], False),
    "alibaba-access-key-id": (lambda r: "LTAI5t" + r.s(ALNUM, 18), ["ALIBABA_CLOUD_ACCESS_KEY_ID", "aliyun_access_key_id", "access_key_id"], False),
    "digitalocean-token": (lambda r: r.choice(["dop_v1_", "dop_v1_", "doo_v1_"]) + r.s(HEX, 64), ["DIGITALOCEAN_TOKEN", "do_token", "DIGITALOCEAN_ACCESS_TOKEN"], False),
    "hashicorp-vault-token": (g_vault, ["VAULT_TOKEN", "vault_token", "token"], False),
    "terraform-cloud-token": (lambda r: r.s(ALNUM, 14) + ".atlasv1." + r.s(ALNUM + "-_", 67), ["TFE_TOKEN", "TF_TOKEN_app_terraform_io", "token"], False),
    "flyio-token": (g_fly, ["FLY_API_TOKEN", "fly_token", "FLY_ACCESS_TOKEN"], False),
    "github-pat": (lambda r: gh_token(r, "ghp_"), ["GITHUB_TOKEN", "GH_TOKEN", "github_token"], False),
    "github-oauth-token": (lambda r: gh_token(r, "gho_"), ["GITHUB_OAUTH_TOKEN", "gh_oauth_token", "access_token"], False),
    "github-user-token": (lambda r: gh_token(r, "ghu_"), ["GITHUB_USER_TOKEN", "user_to_server_token", "token"], False),
    "github-server-token": (lambda r: gh_token(r, "ghs_"), ["GITHUB_INSTALLATION_TOKEN", "installation_token", "GITHUB_TOKEN"], False),
    "github-refresh-token": (lambda r: gh_token(r, "ghr_"), ["GITHUB_REFRESH_TOKEN", "refresh_token", "gh_refresh_token"], False),
    "github-fine-grained-pat": (lambda r: "github_pat_11" + r.s(UPPER + DIGITS, 20) + "_" + r.s(ALNUM, 59), ["GITHUB_TOKEN", "GH_PAT", "github_pat"], False),
    "gitlab-pat": (lambda r: "glpat-" + r.s(B64URL, 20), ["GITLAB_TOKEN", "gitlab_private_token", "GL_TOKEN"], False),
    "gitlab-runner-token": (lambda r: "glrt-" + r.s(B64URL, 20), ["RUNNER_TOKEN", "runner_token", "CI_SERVER_TOKEN"], False),
    "gitlab-pipeline-trigger-token": (lambda r: "glptt-" + r.s(HEX, 40), ["TRIGGER_TOKEN", "pipeline_trigger_token", "GITLAB_TRIGGER"], False),
    "gitlab-deploy-token": (lambda r: "gldt-" + r.s(B64URL, 20), ["DEPLOY_TOKEN", "gitlab_deploy_token", "CI_DEPLOY_PASSWORD"], False),
    "bitbucket-app-password": (lambda r: "ATBB" + r.s(ALNUM, 24) + r.s(UHEX, 8), ["BITBUCKET_APP_PASSWORD", "bitbucket_password", "BB_APP_PASSWORD"], False),
    "atlassian-api-token": (g_atlassian, ["JIRA_API_TOKEN", "ATLASSIAN_API_TOKEN", "confluence_token"], False),
    "slack-bot-token": (g_slack_bot, ["SLACK_BOT_TOKEN", "slack_token", "bot_token"], False),
    "slack-user-token": (g_slack_user, ["SLACK_USER_TOKEN", "slack_user_token", "SLACK_TOKEN"], False),
    "slack-app-token": (g_slack_app, ["SLACK_APP_TOKEN", "app_token", "socket_mode_token"], False),
    "slack-webhook-url": (g_slack_webhook, ["SLACK_WEBHOOK_URL", "webhook_url", "slack_webhook"], False),
    "discord-bot-token": (g_discord_bot, ["DISCORD_BOT_TOKEN", "discord_token", "DISCORD_TOKEN"], False),
    "discord-webhook-url": (g_discord_webhook, ["DISCORD_WEBHOOK_URL", "discord_webhook", "webhook_url"], False),
    "telegram-bot-token": (g_telegram, ["TELEGRAM_BOT_TOKEN", "telegram_token", "TG_BOT_TOKEN"], False),
    "teams-webhook-url": (g_teams_webhook, ["TEAMS_WEBHOOK_URL", "teams_webhook", "ms_teams_url"], False),
    "stripe-secret-key": (g_stripe("sk_live_"), ["STRIPE_SECRET_KEY", "stripe_api_key", "STRIPE_KEY"], False),
    "stripe-restricted-key": (g_stripe("rk_live_"), ["STRIPE_RESTRICTED_KEY", "stripe_rk", "STRIPE_API_KEY"], False),
    "square-access-token": (g_square_access, ["SQUARE_ACCESS_TOKEN", "square_token", "SQ_ACCESS_TOKEN"], False),
    "square-oauth-secret": (lambda r: "sq0csp-" + r.s(B64URL, 43), ["SQUARE_OAUTH_SECRET", "square_application_secret", "SQ_APP_SECRET"], False),
    "braintree-access-token": (lambda r: f"access_token$production${r.s(LOWER + DIGITS, 16)}${r.s(HEX, 32)}", ["BRAINTREE_ACCESS_TOKEN", "braintree_token", "BT_ACCESS_TOKEN"], False),
    "shopify-access-token": (lambda r: r.choice(["shpat_", "shpat_", "shpca_", "shppa_"]) + r.s(HEX, 32), ["SHOPIFY_ACCESS_TOKEN", "shopify_admin_token", "SHOPIFY_TOKEN"], False),
    "shopify-shared-secret": (lambda r: "shpss_" + r.s(HEX, 32), ["SHOPIFY_API_SECRET", "shopify_shared_secret", "SHOPIFY_SECRET"], False),
    "sendgrid-api-key": (lambda r: "SG." + r.s(B64URL, 22) + "." + r.s(B64URL, 43), ["SENDGRID_API_KEY", "sendgrid_key", "SMTP_PASSWORD"], False),
    "mailgun-api-key": (lambda r: "key-" + r.s(HEX, 32), ["MAILGUN_API_KEY", "mailgun_key", "MG_API_KEY"], False),
    "mailchimp-api-key": (lambda r: r.s(HEX, 32) + "-us" + str(r.i(1, 21)), ["MAILCHIMP_API_KEY", "mailchimp_key", "MC_API_KEY"], False),
    "twilio-api-key": (lambda r: "SK" + r.s(HEX, 32), ["TWILIO_API_KEY", "twilio_api_key_sid", "TWILIO_KEY"], False),
    "openai-api-key": (g_openai, ["OPENAI_API_KEY", "openai_key", "OPENAI_KEY"], False),
    "anthropic-api-key": (lambda r: "sk-ant-api03-" + r.s(B64URL, 93) + "AA", ["ANTHROPIC_API_KEY", "anthropic_key", "CLAUDE_API_KEY"], False),
    "huggingface-token": (lambda r: "hf_" + r.s(UPPER + LOWER, 34), ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "hf_token"], False),
    "groq-api-key": (lambda r: "gsk_" + r.s(ALNUM, 52), ["GROQ_API_KEY", "groq_key", "GROQ_KEY"], False),
    "replicate-api-token": (lambda r: "r8_" + r.s(ALNUM, 37), ["REPLICATE_API_TOKEN", "replicate_token", "REPLICATE_KEY"], False),
    "perplexity-api-key": (lambda r: "pplx-" + r.s(ALNUM, 48), ["PERPLEXITY_API_KEY", "pplx_key", "PPLX_API_KEY"], False),
    "npm-access-token": (lambda r: gh_token(r, "npm_"), ["NPM_TOKEN", "NODE_AUTH_TOKEN", "npm_token"], False),
    "pypi-api-token": (lambda r: "pypi-AgEIcHlwaS5vcmc" + r.s(B64URL, r.i(120, 170)), ["PYPI_API_TOKEN", "TWINE_PASSWORD", "pypi_token"], False),
    "rubygems-api-key": (lambda r: "rubygems_" + r.s(HEX, 48), ["GEM_HOST_API_KEY", "rubygems_api_key", "RUBYGEMS_KEY"], False),
    "nuget-api-key": (g_nuget, ["NUGET_API_KEY", "nuget_key", "NUGET_AUTH_TOKEN"], False),
    "dockerhub-pat": (lambda r: "dckr_pat_" + r.s(B64URL, 27), ["DOCKERHUB_TOKEN", "DOCKER_PASSWORD", "docker_pat"], False),
    "crates-io-token": (lambda r: "cio" + r.s(ALNUM, 32), ["CARGO_REGISTRY_TOKEN", "crates_io_token", "CRATES_TOKEN"], False),
    "datadog-api-key": (lambda r: r.s(HEX, 32), ["DD_API_KEY", "datadog_api_key", "DATADOG_API_KEY"], True),
    "newrelic-user-api-key": (lambda r: "NRAK-" + r.s(UPPER + DIGITS, 27), ["NEW_RELIC_API_KEY", "newrelic_user_key", "NR_API_KEY"], False),
    "sentry-auth-token": (g_sentry, ["SENTRY_AUTH_TOKEN", "sentry_token", "SENTRY_TOKEN"], False),
    "grafana-service-account-token": (lambda r: "glsa_" + r.s(ALNUM, 32) + "_" + r.s(HEX, 8), ["GRAFANA_TOKEN", "grafana_sa_token", "GF_API_KEY"], False),
    "grafana-cloud-token": (g_grafana_cloud, ["GRAFANA_CLOUD_TOKEN", "grafana_cloud_api_key", "GCLOUD_TOKEN"], False),
    "linear-api-key": (lambda r: "lin_api_" + r.s(ALNUM, 40), ["LINEAR_API_KEY", "linear_token", "LINEAR_KEY"], False),
    "postman-api-key": (lambda r: "PMAK-" + r.s(HEX, 24) + "-" + r.s(HEX, 34), ["POSTMAN_API_KEY", "postman_key", "PMAK"], False),
    "notion-token": (lambda r: ("ntn_" + r.digits(11) + r.s(ALNUM, 35)) if r.random() < 0.6 else "secret_" + r.s(ALNUM, 43),
                     ["NOTION_TOKEN", "notion_api_key", "NOTION_SECRET"], False),
    "figma-pat": (lambda r: "figd_" + r.s(B64URL, 40), ["FIGMA_TOKEN", "figma_pat", "FIGMA_ACCESS_TOKEN"], False),
    "airtable-pat": (lambda r: "pat" + r.s(ALNUM, 14) + "." + r.s(HEX, 64), ["AIRTABLE_API_KEY", "airtable_pat", "AIRTABLE_TOKEN"], False),
    "supabase-token": (lambda r: "sbp_" + r.s(HEX, 40), ["SUPABASE_ACCESS_TOKEN", "supabase_token", "SUPABASE_TOKEN"], False),
    "planetscale-token": (lambda r: "pscale_tkn_" + r.s(B64URL, 43), ["PLANETSCALE_SERVICE_TOKEN", "pscale_token", "PS_TOKEN"], False),
    "doppler-token": (lambda r: r.choice(["dp.pt.", "dp.st.", "dp.st.prd."]) + r.s(ALNUM, 43), ["DOPPLER_TOKEN", "doppler_token", "DOPPLER_SERVICE_TOKEN"], False),
    "pulumi-token": (lambda r: "pul-" + r.s(HEX, 40), ["PULUMI_ACCESS_TOKEN", "pulumi_token", "PULUMI_TOKEN"], False),
    "age-secret-key": (g_age, ["AGE_SECRET_KEY", "SOPS_AGE_KEY", "age_key"], False),
    "mapbox-secret-token": (g_mapbox, ["MAPBOX_SECRET_TOKEN", "mapbox_download_token", "MAPBOX_TOKEN"], False),
    "easypost-api-key": (lambda r: "EZAK" + r.s(ALNUM, 54), ["EASYPOST_API_KEY", "easypost_key", "EP_API_KEY"], False),
    "google-oauth-access-token": (g_google_oauth, ["GOOGLE_ACCESS_TOKEN", "access_token", "gcloud_token"], False),
    "jwt": (g_jwt, ["AUTH_TOKEN", "session_token", "bearer_token"], False),
    "database-url": (g_db_url, ["DATABASE_URL", "db_url", "SQLALCHEMY_DATABASE_URI"], False),
    "basic-auth-url": (g_basic_url, ["PIP_INDEX_URL", "registry_url", "remote_url"], False),
    "generic-secret": (g_generic, ["API_KEY", "api_secret", "client_secret", "SECRET_KEY", "auth_token", "password",
                                   "DB_PASSWORD", "encryption_key", "webhook_secret", "APP_SECRET", "session_secret",
                                   "access_token", "SIGNING_KEY", "private_token", "jwt_secret"], True),
}
MULTILINE_TYPES = ["private-key", "openssh-private-key", "putty-private-key", "pgp-private-key"]
ALL_TYPES = list(GEN) + MULTILINE_TYPES


# --------------------------------------------------------------------------------------------
# Naming helpers
# --------------------------------------------------------------------------------------------


def upper(n: str) -> str:
    out = ""
    for i, c in enumerate(n):
        if c.isupper() and i and n[i - 1].islower():
            out += "_"
        out += c
    return out.upper()


def lower(n: str) -> str:
    return upper(n).lower()


def camel(n: str) -> str:
    parts = lower(n).split("_")
    return parts[0] + "".join(p.title() for p in parts[1:])


def pascal(n: str) -> str:
    return "".join(p.title() for p in lower(n).split("_"))


# --------------------------------------------------------------------------------------------
# Filler: plausible, secret-free text per file kind
# --------------------------------------------------------------------------------------------

WORDS = ("account order invoice customer payment shipment item cart user session request response cache queue worker "
         "event message batch record report metric config setting handler service client server router module schema "
         "table column index query result status error retry timeout limit offset page cursor filter sort region zone "
         "cluster node pod volume bucket object file path stream buffer chunk frame packet header body payload entry "
         "ledger balance amount currency price discount tax total subtotal address email phone profile avatar role "
         "permission group team project task ticket comment label milestone release build deploy artifact image tag").split()
VERBS = "load save fetch update create delete parse render validate compute resolve apply merge split emit flush sync".split()


def w(r: R) -> str:
    return r.choice(WORDS)


def ident(r: R, style="snake") -> str:
    a, b = r.choice(VERBS), w(r)
    if style == "camel":
        return a + b.title()
    if style == "pascal":
        return a.title() + b.title()
    return f"{a}_{b}"


def sentence(r: R, n=None) -> str:
    n = n or r.i(6, 16)
    s = " ".join(r.choice(WORDS + VERBS + ["the", "a", "to", "of", "and", "is", "when", "for", "with", "this"]) for _ in range(n))
    return s[0].upper() + s[1:] + "."


def filler(r: R, kind: str, n: int) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        out += FILLERS.get(kind, FILLERS["txt"])(r)
    return out


def f_py(r):
    fn, a, b = ident(r), w(r), w(r)
    return [f"def {fn}({a}, {b}=None, limit={r.i(1, 500)}):", f'    """{sentence(r)}"""',
            f"    if {a} is None:", f"        raise ValueError(\"{a} is required\")",
            f"    result = [{b} for {b} in {a} if {b}.{w(r)} > {r.i(0, 99)}]",
            f"    logger.debug(\"{fn}: %d {w(r)}s\", len(result))", "    return result[:limit]", ""]


def f_js(r):
    fn, a = ident(r, "camel"), w(r)
    return [f"export async function {fn}({a}, options = {{}}) {{", f"  // {sentence(r)}",
            f"  const {w(r)}List = await db.{w(r)}.findMany({{ where: {{ {a}Id: {a}.id }}, take: {r.i(5, 200)} }});",
            f"  if (!{w(r)}List.length) return null;", f"  return {w(r)}List.map((x) => ({{ ...x, {w(r)}: x.{w(r)} ?? {r.i(0, 9)} }}));", "}", ""]


def f_go(r):
    fn, a = ident(r, "pascal"), w(r)
    return [f"// {fn} {sentence(r).lower()}", f"func (s *{w(r).title()}Service) {fn}(ctx context.Context, {a} *{a.title()}) error {{",
            f"\tif {a} == nil {{", f"\t\treturn fmt.Errorf(\"{a}: %w\", ErrNotFound)", "\t}",
            f"\tctx, cancel := context.WithTimeout(ctx, {r.i(1, 30)}*time.Second)", "\tdefer cancel()",
            f"\treturn s.store.{ident(r, 'pascal')}(ctx, {a}.ID)", "}", ""]


def f_rs(r):
    fn, a = ident(r), w(r)
    return [f"/// {sentence(r)}", f"pub fn {fn}({a}: &[{a.title()}], limit: usize) -> Result<Vec<u64>, Error> {{",
            f"    let out: Vec<u64> = {a}.iter().filter(|x| x.{w(r)} > {r.i(0, 99)}).map(|x| x.id).take(limit).collect();",
            f"    tracing::debug!(count = out.len(), \"{fn}\");", "    Ok(out)", "}", ""]


def f_java(r):
    fn, a = ident(r, "camel"), w(r)
    return [f"    /** {sentence(r)} */", f"    public List<{a.title()}> {fn}(long {a}Id, int limit) {{",
            f"        var items = repository.findBy{w(r).title()}({a}Id, PageRequest.of(0, limit));",
            f"        log.info(\"{fn} returned {{}} rows\", items.size());", "        return items;", "    }", ""]


def f_rb(r):
    fn, a = ident(r), w(r)
    return [f"  # {sentence(r)}", f"  def {fn}({a}, limit: {r.i(1, 100)})", f"    {a}.where({w(r)}: true).order(:created_at).limit(limit)",
            "  end", ""]


def f_sh(r):
    return [f"# {sentence(r)}", f"if [[ -z \"${{{upper(w(r))}_DIR:-}}\" ]]; then", f"  echo \"{w(r)} dir not set, using default\" >&2", "fi",
            f"{ident(r)}() {{", f"  local {w(r)}=\"$1\"", f"  find \"$BUILD_DIR\" -name '*.{r.choice(['tar', 'log', 'json'])}' -mtime +{r.i(1, 30)} -delete", "}", ""]


def f_yaml(r):
    k = w(r)
    return [f"{k}:", f"  enabled: {r.choice(['true', 'false'])}", f"  {w(r)}_limit: {r.i(1, 5000)}", f"  {w(r)}: {w(r)}-{w(r)}",
            f"  timeout: {r.i(1, 120)}s", f"  # {sentence(r)}"]


def f_env(r):
    return [f"# {sentence(r)}", f"{upper(w(r))}_{upper(w(r))}={r.choice(['true', 'false', str(r.i(1, 9000)), w(r)])}",
            f"{upper(w(r))}_HOST={w(r)}.internal", f"LOG_LEVEL={r.choice(['info', 'debug', 'warn'])}"]


def f_tf(r):
    n = w(r)
    return [f"resource \"aws_{r.choice(['s3_bucket', 'sqs_queue', 'iam_role', 'security_group'])}\" \"{n}\" {{",
            f"  name = \"{n}-${{var.environment}}\"", f"  tags = {{", f"    Team = \"{w(r)}\"", "  }", "}", ""]


def f_md(r):
    return [f"## {w(r).title()} {w(r)}", "", sentence(r, 20) + " " + sentence(r, 12), "", f"- {sentence(r, 8)}", f"- {sentence(r, 7)}", ""]


def f_log(r):
    ts = f"2024-{r.i(1, 12):02d}-{r.i(1, 28):02d}T{r.i(0, 23):02d}:{r.i(0, 59):02d}:{r.i(0, 59):02d}.{r.i(0, 9999999):07d}Z"
    return [r.choice([f"{ts} ##[group]Run {r.choice(['actions/setup-node@v4', 'npm ci', 'cargo build --release', 'make test'])}",
                      f"{ts} {r.choice(['INFO', 'WARN', 'DEBUG'])} {w(r)}: {sentence(r)}",
                      f"{ts} added {r.i(10, 900)} packages in {r.i(1, 60)}s",
                      f"{ts}    Compiling {w(r)}-{w(r)} v0.{r.i(1, 30)}.{r.i(0, 9)}",
                      f"{ts} test {w(r)}::{ident(r)} ... ok",
                      f"{ts} ##[endgroup]"])]


def f_docker(r):
    return [f"RUN apt-get update && apt-get install -y --no-install-recommends {w(r)}-tools curl && rm -rf /var/lib/apt/lists/*",
            f"COPY {w(r)}/ /app/{w(r)}/", f"# {sentence(r)}"]


def f_ini(r):
    return [f"[{w(r)}]", f"{w(r)}_count = {r.i(1, 99)}", f"{w(r)} = {w(r)}", ""]


def f_xml(r):
    return [f"    <add key=\"{pascal(w(r))}{pascal(w(r))}\" value=\"{r.i(1, 999)}\" />"]


def f_txt(r):
    return [sentence(r)]


FILLERS = {"py": f_py, "js": f_js, "ts": f_js, "go": f_go, "rs": f_rs, "java": f_java, "rb": f_rb, "sh": f_sh,
           "yaml": f_yaml, "env": f_env, "tf": f_tf, "md": f_md, "log": f_log, "docker": f_docker, "ini": f_ini,
           "toml": f_ini, "xml": f_xml, "txt": f_txt, "properties": f_env}

# --------------------------------------------------------------------------------------------
# Contexts: how a single-line value is written in each kind of file.
# Each returns a list of lines and the index of the line holding the value.
# 'named' contexts name the value (assignment, key); 'bare' ones do not (URL in a command, a log line).
# --------------------------------------------------------------------------------------------


def C(lines, idx=None):
    if isinstance(lines, str):
        lines = [lines]
    return lines, (len(lines) - 1 if idx is None else idx)


NAMED = {
    "env": [lambda n, v: C(f"{upper(n)}={v}"), lambda n, v: C(f'export {upper(n)}="{v}"'), lambda n, v: C(f"{upper(n)}='{v}'")],
    "yaml": [lambda n, v: C(f"{lower(n)}: {v}"), lambda n, v: C(f'{lower(n)}: "{v}"'),
             lambda n, v: C(["credentials:", f"  {lower(n)}: '{v}'"]),
             lambda n, v: C(["env:", f"  - name: {upper(n)}", f"    value: \"{v}\""])],
    "py": [lambda n, v: C(f'{upper(n)} = "{v}"'), lambda n, v: C(f"client = {pascal(n).replace('Key', '')}Client({lower(n)}='{v}', timeout=30)"),
           lambda n, v: C(f'os.environ.setdefault("{upper(n)}", "{v}")'), lambda n, v: C(["settings = {", f'    "{lower(n)}": "{v}",', "}"], 1)],
    "js": [lambda n, v: C(f"const {camel(n)} = '{v}';"), lambda n, v: C(f"export const {upper(n)} = \"{v}\";"),
           lambda n, v: C(["module.exports = {", f"  {camel(n)}: `{v}`,", "};"], 1),
           lambda n, v: C(f"process.env.{upper(n)} = process.env.{upper(n)} || '{v}';")],
    "go": [lambda n, v: C(f'const {camel(n)} = "{v}"'), lambda n, v: C(f'var {pascal(n)} = "{v}"'),
           lambda n, v: C(["cfg := Config{", f'\t{pascal(n)}: "{v}",', "}"], 1)],
    "rs": [lambda n, v: C(f'const {upper(n)}: &str = "{v}";'), lambda n, v: C(f'let {lower(n)} = String::from("{v}");')],
    "java": [lambda n, v: C(f'    private static final String {upper(n)} = "{v}";'), lambda n, v: C(f'    props.setProperty("{lower(n).replace("_", ".")}", "{v}");')],
    "rb": [lambda n, v: C(f"{upper(n)} = '{v}'"), lambda n, v: C(f"  config.{lower(n)} = \"{v}\"")],
    "sh": [lambda n, v: C(f"export {upper(n)}={v}"), lambda n, v: C(f'{upper(n)}="{v}" ./scripts/deploy.sh --env prod'),
           lambda n, v: C(f"docker run --rm -e {upper(n)}={v} ghcr.io/acme-corp/worker:1.4.2")],
    "tf": [lambda n, v: C(f'  {lower(n)} = "{v}"'), lambda n, v: C(["locals {", f'  {lower(n)} = "{v}"', "}"], 1)],
    "docker": [lambda n, v: C(f"ENV {upper(n)}={v}"), lambda n, v: C(f'ARG {upper(n)}="{v}"')],
    "toml": [lambda n, v: C(f'{lower(n)} = "{v}"')],
    "ini": [lambda n, v: C(f"{lower(n)} = {v}")],
    "properties": [lambda n, v: C(f"app.{lower(n).replace('_', '.')}={v}")],
    "xml": [lambda n, v: C(f'    <add key="{pascal(n)}" value="{v}" />')],
    "md": [lambda n, v: C(["```bash", f"export {upper(n)}={v}", "```"], 1), lambda n, v: C(f"Set `{upper(n)}={v}` in your shell before running the tests.")],
    "log": [lambda n, v: C(f"2024-06-{10 + len(n) % 18:02d}T08:14:{len(v) % 60:02d}.5520381Z env: {upper(n)}={v}"),
            lambda n, v: C(f"2024-06-{10 + len(n) % 18:02d}T08:15:02.1193812Z DEBUG config loaded: {{\"{lower(n)}\": \"{v}\", \"region\": \"eu-west-1\"}}")],
}

BARE = {
    "sh": [lambda v: C(f'curl -sS -H "Authorization: Bearer {v}" https://api.acme-corp.io/v2/orders?limit=50'),
           lambda v: C(f"echo '{v}' | docker login --password-stdin -u ci-bot registry.acme-corp.io")],
    "log": [lambda v: C(f"2024-05-21T14:02:11.0398812Z + curl -fsSL -H 'Authorization: token {v}' https://api.example-ci.dev/repos/acme/app/releases"),
            lambda v: C(f"[2024-05-21 14:02:13] worker.3 | retrying request with credentials {v} (attempt 2/5)")],
    "md": [lambda v: C(f"The integration currently authenticates with `{v}`; rotate it after the migration."),
           lambda v: C(["```", f"$ acmectl login --token {v}", "Logged in as ci-bot", "```"], 1)],
    "py": [lambda v: C(f'    resp = session.get(url, headers={{"Authorization": "Bearer {v}"}})')],
    "js": [lambda v: C(f"  headers: {{ Authorization: 'Bearer {v}' }},")],
    "yaml": [lambda v: C(f"    - --auth={v}")],
}

# URL-shaped secrets are written where URLs go, not in Authorization headers
BARE_URL = {
    "py": [lambda v: C(f'    resp = requests.post("{v}", json=payload, timeout=10)')],
    "js": [lambda v: C(f"  await fetch('{v}', {{ method: 'POST', body: JSON.stringify(msg) }});")],
    "sh": [lambda v: C(f'curl -fsS --retry 3 "{v}"')],
    "log": [lambda v: C(f"2024-05-21T14:02:12.4410021Z connecting to {v} (attempt 1/3)")],
    "md": [lambda v: C(f"Endpoint used by the nightly job: <{v}>")],
    "yaml": [lambda v: C(f"    - --url={v}")],
}
URL_TYPES = {"slack-webhook-url", "discord-webhook-url", "teams-webhook-url", "database-url", "basic-auth-url"}
NO_BARE = {"age-secret-key"}

# Special contexts for some types (file kind, builder)
SPECIAL = {
    "npm-access-token": [("npmrc", lambda v: C(f"//registry.npmjs.org/:_authToken={v}")),
                         ("yaml", lambda v: C(["      - run: npm publish", "        env:", f"          NODE_AUTH_TOKEN: {v}"]))],
    "pypi-api-token": [("pypirc", lambda v: C(["[pypi]", "username = __token__", f"password = {v}"])),
                       ("sh", lambda v: C(f"twine upload -u __token__ -p {v} dist/*"))],
    "aws-access-key-id": [("awscreds", lambda v: C(["[default]", f"aws_access_key_id = {v}"]))],
    "aws-secret-access-key": [("awscreds", lambda v: C(["[prod]", f"aws_secret_access_key = {v}"])),
                              ("json", lambda v: C(f'  "SecretAccessKey": "{v}",')),
                              ("sh", lambda v: C(f"aws configure set aws_secret_access_key {v} --profile deploy"))],
    "azure-storage-account-key": [("env", lambda v: C(f"AZURE_STORAGE_CONNECTION_STRING=DefaultEndpointsProtocol=https;AccountName=acmeprodlogs;AccountKey={v};EndpointSuffix=core.windows.net")),
                                  ("json", lambda v: C(f'  "StorageConnection": "DefaultEndpointsProtocol=https;AccountName=stbilling01;AccountKey={v};EndpointSuffix=core.windows.net",'))],
    "datadog-api-key": [("yaml", lambda v: C(["datadog:", f"  apiKey: {v}", "  site: datadoghq.eu"], 1))],
    "database-url": [("yaml", lambda v: C(["services:", "  api:", "    environment:", f"      DATABASE_URL: {v}"])),
                     ("log", lambda v: C(f"2024-02-02T10:00:01Z ERROR sqlalchemy.pool: could not connect to {v}: timeout"))],
    "basic-auth-url": [("ini", lambda v: C(["[global]", f"index-url = {v}"])),
                       ("gitconfig", lambda v: C(['[remote "origin"]', f"\turl = {v}", "\tfetch = +refs/heads/*:refs/remotes/origin/*"], 1)),
                       ("sh", lambda v: C(f"git clone {v} /tmp/build-src")),
                       ("log", lambda v: C(f"2024-03-07T09:12:44Z fatal: unable to access '{v}': The requested URL returned error: 403"))],
    "slack-webhook-url": [("sh", lambda v: C(f"curl -X POST -H 'Content-type: application/json' --data '{{\"text\":\"deploy done\"}}' {v}"))],
    "discord-webhook-url": [("sh", lambda v: C(f'curl -H "Content-Type: application/json" -d \'{{"content":"build failed"}}\' "{v}"'))],
    "teams-webhook-url": [("json", lambda v: C(f'  "teamsWebhook": "{v}",'))],
    "jwt": [("sh", lambda v: C(f"curl -H 'Authorization: Bearer {v}' https://api.acme-corp.io/v1/me")),
            ("http", lambda v: C(["GET /v1/accounts HTTP/1.1", "Host: api.acme-corp.io", f"Authorization: Bearer {v}"]))],
    "age-secret-key": [("agekeys", lambda v: C(["# created: 2024-03-11T09:30:12Z", "# public key: PUBKEY", v]))],
    "generic-secret": [("json", lambda v: C(f'  "client_secret": "{v}",')),
                       ("k8s", lambda v: C(f"  api-secret: \"{v}\"")),
                       ("yaml", lambda v: C(["spring:", "  datasource:", "    username: app", f"    password: '{v}'"])),
                       ("xml", lambda v: C(f'    <add key="ApiSecret" value="{v}" />'))],
}

KIND_EXT = {"env": ".env", "yaml": ".yaml", "py": ".py", "js": ".js", "go": ".go", "rs": ".rs", "java": ".java", "rb": ".rb",
            "sh": ".sh", "tf": ".tf", "docker": "Dockerfile", "toml": ".toml", "ini": ".ini", "properties": ".properties",
            "xml": ".config", "md": ".md", "log": ".log", "json": ".json", "k8s": ".yaml", "npmrc": ".npmrc", "pypirc": ".pypirc",
            "awscreds": "credentials", "gitconfig": "config", "agekeys": "keys.txt", "http": ".http", "txt": ".txt", "pem": ".pem"}

DIRS = ["services/billing", "services/orders", "services/auth", "apps/web", "apps/admin", "infra/terraform", "deploy/k8s",
        "deploy/helm/api", "scripts", "tools/release", "ci", "docs", "docs/runbooks", "config", "legacy/php-bridge",
        "packages/sdk", "packages/cli", "ops/ansible", "data/etl", "mobile/backend"]

# --------------------------------------------------------------------------------------------
# Snippet collection and file assembly
# --------------------------------------------------------------------------------------------


class Snip:
    __slots__ = ("lines", "labels")

    def __init__(self, lines, labels):
        self.lines = lines
        self.labels = labels  # list of (rel_start, rel_end, 'pos'|'neg', type_or_kind)


def pos(lines, idx, typ, end=None):
    return Snip(lines, [(idx, idx if end is None else end, "pos", typ)])


def neg(lines, idx, kind, end=None):
    return Snip(lines, [(idx, idx if end is None else end, "neg", kind)])


class Corpus:
    def __init__(self, seed: int):
        self.r = R(seed)
        self.snips: dict[str, list[Snip]] = {}
        self.files: dict[str, list[str]] = {}
        self.labels = {"positives": [], "negatives": []}

    def add(self, kind: str, snip: Snip):
        self.snips.setdefault(kind, []).append(snip)

    # ---- positives ----
    def positives(self):
        r = self.r
        for typ, (gen, names, contextual) in GEN.items():
            n = 8 if typ == "generic-secret" else 6
            n += 12 if typ == "generic-secret" else r.i(0, 2)
            specials = list(SPECIAL.get(typ, []))
            named_kinds = list(NAMED)
            bare_kinds = list(BARE)
            r.shuffle(named_kinds)
            r.shuffle(bare_kinds)
            for k in range(n):
                v = gen(r)
                name = names[k % len(names)]
                if k < len(specials):
                    kind, ctx = specials[k]
                    lines, idx = ctx(v)
                elif not contextual and typ not in NO_BARE and k % 3 == 2:
                    table = BARE_URL if typ in URL_TYPES else BARE
                    kind = bare_kinds[k % len(bare_kinds)]
                    lines, idx = r.choice(table[kind])(v)
                else:
                    kind = named_kinds[k % len(named_kinds)]
                    if typ == "generic-secret" and kind in ("md", "log"):
                        kind = "env"
                    lines, idx = r.choice(NAMED[kind])(name, v)
                snip = pos(lines, idx, typ)
                if kind == "agekeys":
                    lines[1] = "# public key: " + bech32_encode("age", r.b(32))
                    snip.labels.append((1, 1, "neg", "public-key"))
                self.add(kind, snip)
        self.multiline_positives()

    def multiline_positives(self):
        r = self.r
        keys = [
            ("pem", pem_lines("RSA PRIVATE KEY", rsa_der(r))),
            ("pem", pem_lines("EC PRIVATE KEY", ec_der(r))),
            ("pem", pem_lines("DSA PRIVATE KEY", dsa_der(r))),
            ("pem", pem_lines("PRIVATE KEY", pkcs8_der(r))),
            ("pem", pem_lines("PRIVATE KEY", pkcs8_der(r, ec=True))),
            ("pem", pem_lines("ENCRYPTED PRIVATE KEY", pkcs8_encrypted_der(r))),
            ("pem", pem_lines("RSA PRIVATE KEY", r.b(1190), headers=["Proc-Type: 4,ENCRYPTED", f"DEK-Info: AES-128-CBC,{r.s(UHEX, 32)}"])),
        ]
        for kind, lines in keys:
            self.add(kind, pos(lines, 0, "private-key", len(lines) - 1))
        # PEM inside YAML (k8s TLS secret via stringData), Terraform heredoc, and Python string
        k = pem_lines("PRIVATE KEY", pkcs8_der(r, ec=True))
        self.add("k8s", Snip(["  tls.key: |"] + ["    " + x for x in k], [(1, len(k), "pos", "private-key")]))
        k = pem_lines("RSA PRIVATE KEY", rsa_der(r))
        self.add("tf", Snip(["  private_key = <<-EOT"] + ["    " + x for x in k] + ["  EOT"], [(1, len(k), "pos", "private-key")]))
        k = pem_lines("EC PRIVATE KEY", ec_der(r))
        self.add("py", Snip(['SIGNING_KEY = """' + k[0]] + k[1:] + ['"""'], [(0, len(k) - 1, "pos", "private-key")]))
        # GCP service-account JSON: one line with \n escapes
        for _ in range(2):
            k = pem_lines("PRIVATE KEY", pkcs8_der(r))
            esc = "\\n".join(k) + "\\n"
            lines = ["{", '  "type": "service_account",', f'  "project_id": "acme-{r.s(LOWER, 6)}-prod",',
                     f'  "private_key_id": "{r.s(HEX, 40)}",', f'  "private_key": "{esc}",',
                     f'  "client_email": "deployer@acme-{r.s(LOWER, 6)}.iam.gserviceaccount.com",',
                     f'  "client_id": "{r.digits(21)}",', '  "auth_uri": "https://accounts.google.com/o/oauth2/auth",',
                     '  "token_uri": "https://oauth2.googleapis.com/token"', "}"]
            self.files[self.path_for("gcpsa", ".json", fixed="service-account")] = None  # placeholder; replaced below
            path = list(self.files)[-1]
            self.files[path] = lines
            self.label(path, 5, 5, "pos", "private-key")
            self.label(path, 4, 4, "neg", "key-identifier")
            self.label(path, 7, 7, "neg", "public-identifier")
        for enc in (False, False, False, True, False, False):
            k = openssh_private(r, enc)
            self.add("pem", pos(k, 0, "openssh-private-key", len(k) - 1))
        for v3 in (True, True, False, True, False, True):
            k = putty_private(r, v3)
            self.add("ppk", pos(k, 0, "putty-private-key", len(k) - 1))
        for _ in range(6):
            k = pgp_block(r, True)
            self.add(r.choice(["asc", "md"]), pos(k, 0, "pgp-private-key", len(k) - 1))

    # ---- negatives ----
    def negatives(self):
        r = self.r
        # documented example values, in secret-ish contexts
        docs = [
            ("aws_access_key_id", "AKIAIOSFODNN7EXAMPLE"), ("aws_secret_access_key", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
            ("AWS_ACCESS_KEY_ID", "AKIAI44QH8DHBEXAMPLE"), ("AWS_SECRET_ACCESS_KEY", "je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY"),
            ("STRIPE_SECRET_KEY", "sk_test_4eC39HqLyjWDarjtT1zdp7dc"), ("stripe_api_key", "sk_test_4eC39HqLyjWDarjtT1zdp7dc"),
            ("GITHUB_TOKEN", "gho_16C7e42F292c6912E7710c838347Ae178B4a"),
            ("AZURE_STORAGE_KEY", "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="),
            ("AUTH_TOKEN", "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"),
        ]
        for rep in range(3):
            for name, v in docs:
                kind = r.choice(["env", "yaml", "py", "js", "md", "ini", "toml"])
                lines, idx = r.choice(NAMED[kind])(name, v)
                self.add(kind, neg(lines, idx, "doc-example"))
        self.add("awscreds", neg(["[example]", "aws_access_key_id = AKIAIOSFODNN7EXAMPLE", "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"], 1, "doc-example", 2))
        self.add("env", neg(["AZURE_STORAGE_CONNECTION_STRING=DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"], 0, "doc-example"))

        # placeholders in secret-ish contexts
        placeholders = ["<your-api-key>", "xxxxxxxxxxxxxxxxxxxxxxxx", "changeme", "YOUR_TOKEN_HERE", "sk_live_xxxxxxxxxxxxxxxxxxxxxxxx",
                        "ghp_" + "X" * 36, "AKIAXXXXXXXXXXXXXXXX", "********", "REPLACE_ME", "your-secret-here", "xoxb-your-bot-token",
                        "<password>", "TODO", "insert-key-here", "sk-...", "glpat-xxxxxxxxxxxxxxxxxxxx", "[REDACTED]", "none",
                        "dummy", "secret", "password", "hf_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "sk-ant-api03-...", "npm_" + "x" * 36,
                        "SG.xxxxxxxxxxxxxxxxxxxxxx.xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "0000000000000000000000000000000000000000"]
        pnames = ["API_KEY", "client_secret", "password", "GITHUB_TOKEN", "STRIPE_SECRET_KEY", "AWS_ACCESS_KEY_ID", "auth_token",
                  "SLACK_BOT_TOKEN", "OPENAI_API_KEY", "secret_key", "NPM_TOKEN", "SENDGRID_API_KEY", "HF_TOKEN", "db_password"]
        for i, v in enumerate(placeholders * 2):
            kind = r.choice(["env", "yaml", "py", "js", "md", "toml", "go", "docker", "tf", "java"])
            lines, idx = r.choice(NAMED[kind])(pnames[i % len(pnames)], v)
            self.add(kind, neg(lines, idx, "placeholder"))
        self.add("npmrc", neg(["//registry.npmjs.org/:_authToken=${NPM_TOKEN}"], 0, "template"))
        self.add("pypirc", neg(["[testpypi]", "username = __token__", "password = <your PyPI token>"], 2, "placeholder"))
        self.add("yaml", neg(["database:", "  url: postgres://USER:PASSWORD@localhost:5432/DBNAME"], 1, "placeholder"))
        self.add("md", neg(["Clone with `git clone https://<username>:<token>@git.corp-tools.io/platform/infra.git`."], 0, "placeholder"))
        self.add("ppk", neg(["-----BEGIN RSA PRIVATE KEY-----", "...", "-----END RSA PRIVATE KEY-----"], 0, "placeholder", 2))
        self.add("md", neg(["```", "-----BEGIN OPENSSH PRIVATE KEY-----", "<paste your key here>", "-----END OPENSSH PRIVATE KEY-----", "```"], 1, "placeholder", 3))

        # template variables
        templates = [("API_KEY", "${API_KEY}"), ("token", "{{ .Values.token }}"), ("SECRET", "$(SECRET)"), ("password", "%(password)s"),
                     ("client_secret", "{{ secrets.CLIENT_SECRET }}"), ("NPM_TOKEN", "${{ secrets.NPM_TOKEN }}"),
                     ("db_password", "{{ vault('secret/data/db#password') }}"), ("STRIPE_KEY", "<%= ENV['STRIPE_KEY'] %>"),
                     ("GITHUB_TOKEN", "${GITHUB_TOKEN:?must be set}"), ("auth_token", "${env:AUTH_TOKEN}"),
                     ("password", "{{ lookup('env', 'DB_PASSWORD') }}"), ("api_secret", "#{API_SECRET}"),
                     ("jwt_secret", "${JWT_SECRET}"), ("SLACK_WEBHOOK_URL", "${SLACK_WEBHOOK_URL}")]
        for i, (n, v) in enumerate(templates * 2):
            kind = r.choice(["env", "yaml", "docker", "sh", "toml", "tf"])
            lines, idx = r.choice(NAMED[kind])(n, v)
            self.add(kind, neg(lines, idx, "template"))
        code_tpl = [("py", 'API_KEY = os.environ["API_KEY"]'), ("py", "password = os.getenv('DB_PASSWORD', '')"),
                    ("js", "const token = process.env.TOKEN;"), ("js", "const stripe = new Stripe(process.env.STRIPE_SECRET_KEY);"),
                    ("go", 'token := os.Getenv("GITHUB_TOKEN")'), ("rb", "API_SECRET = ENV.fetch('API_SECRET')"),
                    ("tf", "  password = var.db_password"), ("tf", '  secret   = data.vault_generic_secret.app.data["api_key"]'),
                    ("java", '    String secret = System.getenv("CLIENT_SECRET");'), ("rs", 'let token = std::env::var("API_TOKEN")?;'),
                    ("yaml", "      password: ${DB_PASSWORD}"), ("yaml", "    token: {{ .Values.auth.token | quote }}"),
                    ("sh", 'curl -H "Authorization: Bearer $GITHUB_TOKEN" https://api.github.com/user'),
                    ("yaml", "  - DATABASE_URL=postgres://app:${POSTGRES_PASSWORD}@db:5432/app"),
                    ("docker", "ENV API_KEY=${API_KEY}"), ("k8s", "  password: {{ .Values.db.password | b64enc }}")]
        for kind, line in code_tpl * 2:
            self.add(kind, neg([line], 0, "template"))

        # hashes
        for i in range(40):
            h = r.choice([r.s(HEX, 64), r.s(HEX, 40), r.s(HEX, 32)])
            kind, line = r.choice([
                ("log", f"2024-04-02T11:00:{i % 60:02d}Z sha256:{r.s(HEX, 64)} pushed to registry.acme-corp.io/api"),
                ("log", f"commit {r.s(HEX, 40)}"), ("md", f"Fixed in {r.s(HEX, 40)} (see changelog)."),
                ("yaml", f"    rev: {r.s(HEX, 40)}"), ("yaml", f"      - uses: actions/checkout@{r.s(HEX, 40)}  # v4.1.1"),
                ("sh", f"echo \"{r.s(HEX, 64)}  dist/app.tar.gz\" | sha256sum -c -"), ("json", f'  "etag": "{r.s(HEX, 32)}",'),
                ("py", f'EXPECTED_SHA256 = "{r.s(HEX, 64)}"'), ("go", f'const schemaDigest = "{r.s(HEX, 64)}"'),
                ("toml", f'checksum = "{h}"'), ("txt", f"{r.s(HEX, 32)}  vendor/jquery.min.js"),
                ("docker", f"FROM python:3.12-slim@sha256:{r.s(HEX, 64)}")])
            self.add(kind, neg([line], 0, "hash"))
        # UUIDs
        for i in range(30):
            u = r.uuid()
            kind, line = r.choice([("json", f'  "tenant_id": "{u}",'), ("yaml", f"  client_id: {u}"), ("log", f"2024-04-02T11:01:02Z request_id={u} status=200"),
                                   ("env", f"AZURE_TENANT_ID={u}"), ("py", f'DEFAULT_ORG = uuid.UUID("{u}")'), ("tf", f'  subscription_id = "{u}"'),
                                   ("js", f"const sessionId = '{u}';"), ("md", f"Dashboard: https://grafana.acme-corp.io/d/{u}/overview")])
            self.add(kind, neg([line], 0, "uuid"))
        # public keys / certificates
        for i in range(8):
            self.add("txt", neg([f"{ssh_public(r)} {r.choice(['alice', 'bob', 'deploy', 'ci'])}@{r.choice(['laptop', 'build-01', 'bastion'])}"], 0, "public-key"))
            self.add("yaml", neg(["ssh_authorized_keys:", f"  - {ssh_public(r, 'ed25519')} ops@acme-corp.io"], 1, "public-key"))
        for i in range(3):
            k = public_key_pem(r)
            self.add("pem", neg(k, 0, "public-key", len(k) - 1))
            k = cert_lines(r)
            self.add("pem", neg(k, 0, "certificate", len(k) - 1))
            k = pgp_block(r, False)
            self.add("asc", neg(k, 0, "public-key", len(k) - 1))
        k = cert_lines(r)
        self.add("k8s", Snip(["  tls.crt: |"] + ["    " + x for x in k], [(1, len(k), "neg", "certificate")]))
        # public identifiers (by design not secret)
        for i in range(12):
            kind, line = r.choice([("js", f"const stripe = Stripe('pk_live_{r.s(ALNUM, 24)}');"),
                                   ("js", f"mapboxgl.accessToken = 'pk.{b64u(json.dumps({'u': 'acme-maps', 'a': r.s(LOWER + DIGITS, 25)}, separators=(',', ':')).encode())}.{r.s(B64URL, 22)}';"),
                                   ("yaml", f"  google_client_id: {r.digits(12)}-{r.s(LOWER + DIGITS, 32)}.apps.googleusercontent.com"),
                                   ("tf", f'  role_arn = "arn:aws:iam::{r.digits(12)}:role/deploy"'),
                                   ("env", f"NEXT_PUBLIC_STRIPE_PUBLISHABLE_KEY=pk_live_{r.s(ALNUM, 24)}")])
            self.add(kind, neg([line], 0, "public-identifier"))
        # tokens with a wrong checksum: half beside secret-ish names, half in plain text
        for i in range(16):
            pre = ["ghp_", "gho_", "ghs_", "ghu_", "ghr_", "npm_"][i % 6]
            v = gh_token_bad(r, pre)
            if i % 2:
                kind = r.choice(["env", "yaml", "py"])
                lines, idx = r.choice(NAMED[kind])("GITHUB_TOKEN" if pre != "npm_" else "NPM_TOKEN", v)
            else:
                kind = r.choice(["md", "py", "js"])
                lines, idx = {"md": C(f"A classic token looks like `{v}` (this one fails the checksum)."),
                              "py": C(f'    assert not is_valid_token("{v}")'), "js": C(f"  expect(validate('{v}')).toBe(false);")}[kind]
            self.add(kind, neg(lines, idx, "bad-checksum"))
        # test / mock placeholders
        for i in range(16):
            kind, line = r.choice([("py", 'MOCK_API_KEY = "test-api-key"'), ("py", '    client = Client(api_key="fake-key-for-tests")'),
                                   ("js", "const token = 'test-token';"), ("go", 'const testSecret = "not-a-real-secret"'),
                                   ("rb", "  let(:password) { 'password123' }"), ("java", '    private static final String TEST_TOKEN = "dummy-token";'),
                                   ("py", 'FAKE_GITHUB_TOKEN = "ghp_fake"'), ("js", "  apiKey: 'mock_api_key',")])
            self.add(kind, neg([line], 0, "test-placeholder"))
        # non-secret values of secret-ish names
        for i in range(30):
            kind, line = r.choice([("py", 'password = ""'), ("py", 'token_type = "Bearer"'), ("py", 'PASSWORD_FIELD = "password"'),
                                   ("yaml", "    secretName: db-credentials"), ("yaml", "  api_key_header: X-API-Key"), ("py", "PASSWORD_MIN_LENGTH = 12"),
                                   ("py", 'TOKEN_URL = "https://oauth2.googleapis.com/token"'), ("yaml", "  auth_method: password"),
                                   ("py", "password = getpass.getpass()"), ("py", "secret = os.urandom(32)"),
                                   ("py", 'token = request.headers.get("Authorization")'), ("js", "const secretKey = crypto.randomBytes(32);"),
                                   ("yaml", "        secretKeyRef:"), ("env", "SECRET_KEY_BASE_FILE=/run/secrets/skb"),
                                   ("go", 'passwordEnv := "PGPASSWORD"'), ("java", '    String tokenHeader = "X-Auth-Token";'),
                                   ("tf", '  secret_name = "prod/api/stripe"'), ("yaml", "  password: null"), ("ini", "password =")])
            self.add(kind, neg([line], 0, "non-secret-value"))
        # random-looking strings not assigned to secret-ish names
        for i in range(40):
            kind, line = r.choice([("log", f"2024-04-02T11:02:03Z trace_id={r.s(HEX, 32)} span_id={r.s(HEX, 16)} GET /v1/orders 200"),
                                   ("json", f'  "id": "{r.s(ALNUM, 24)}",'), ("json", f'  "cursor": "{b64s(r.b(30))}",'),
                                   ("html", f'<script src="/static/js/main.{r.s(HEX, 8)}.chunk.js" integrity="sha384-{b64s(r.b(48))}" crossorigin="anonymous"></script>'),
                                   ("py", f'    assert encode(payload) == "{b64s(r.b(27))}"'), ("md", f"Video: https://www.youtube.com/watch?v={r.s(B64URL, 11)}"),
                                   ("yaml", f"  build_id: {r.s(ALNUM, 28)}"), ("log", f"x-amz-request-id: {r.s(UPPER + DIGITS, 16)} x-amz-id-2: {b64s(r.b(57))}"),
                                   ("go", f'var fixture = []byte("{b64s(r.b(36))}")'), ("js", f"const CLASS_NAME = 'css-{r.s(LOWER + DIGITS, 6)}-{r.s(ALNUM, 20)}';"),
                                   ("rs", f'const TEST_VECTOR: &str = "{r.s(HEX, 64)}";'), ("sh", f"docker pull ghcr.io/acme-corp/api@sha256:{r.s(HEX, 64)}")])
            self.add(kind, neg([line], 0, "random-unassigned"))
        # encrypted blobs
        for i in range(4):
            vault = ["$ANSIBLE_VAULT;1.1;AES256"] + [r.s(HEX, 80) for _ in range(6)]
            self.add("yaml", Snip(["db_password: !vault |"] + ["  " + x for x in vault], [(1, len(vault), "neg", "encrypted")]))
            self.add("yaml", neg([f"api_key: ENC[AES256_GCM,data:{b64s(r.b(24))},iv:{b64s(r.b(32))},tag:{b64s(r.b(16))},type:str]"], 0, "encrypted"))

    # ---- whole files that are mostly negatives ----
    def bulk_files(self):
        r = self.r
        # package-lock.json with integrity strings
        for j in range(2):
            lines = ["{", '  "name": "web",', '  "lockfileVersion": 3,', '  "packages": {']
            labs = []
            for i in range(80):
                name = f"{w(r)}-{w(r)}"
                lines += [f'    "node_modules/{name}": {{', f'      "version": "{r.i(0, 9)}.{r.i(0, 20)}.{r.i(0, 9)}",',
                          f'      "resolved": "https://registry.npmjs.org/{name}/-/{name}-1.0.0.tgz",']
                labs.append(len(lines))
                lines += [f'      "integrity": "sha512-{b64s(r.b(64))}"', "    },"]
            lines[-1] = "    }"
            lines += ["  }", "}"]
            p = self.path_for("lock", "package-lock.json", fixed="package-lock")
            self.files[p] = lines
            for ln in labs:
                self.label(p, ln, ln, "neg", "lockfile-integrity")
        # requirements.txt with --hash
        lines, labs = [], []
        for i in range(60):
            lines.append(f"{w(r)}-{w(r)}=={r.i(0, 9)}.{r.i(0, 20)}.{r.i(0, 9)} \\")
            lines.append(f"    --hash=sha256:{r.s(HEX, 64)} \\")
            labs.append(len(lines))
            lines.append(f"    --hash=sha256:{r.s(HEX, 64)}")
            labs.append(len(lines))
        p = self.path_for("lock", "requirements.txt", fixed="requirements")
        self.files[p] = lines
        for ln in labs:
            self.label(p, ln, ln, "neg", "lockfile-integrity")
        # go.sum, Cargo.lock, yarn.lock
        lines, labs = [], []
        for i in range(60):
            mod = f"github.com/{w(r)}/{w(r)}"
            lines.append(f"{mod} v1.{r.i(0, 20)}.{r.i(0, 9)} h1:{b64s(r.b(32))}")
            labs.append(len(lines))
            lines.append(f"{mod} v1.{r.i(0, 20)}.{r.i(0, 9)}/go.mod h1:{b64s(r.b(32))}")
            labs.append(len(lines))
        p = self.path_for("lock", "go.sum", fixed="gosum")
        self.files[p] = lines
        for ln in labs:
            self.label(p, ln, ln, "neg", "lockfile-integrity")
        lines, labs = ["version = 4", ""], []
        for i in range(60):
            lines += ["[[package]]", f'name = "{w(r)}-{w(r)}"', f'version = "0.{r.i(0, 20)}.{r.i(0, 9)}"',
                      'source = "registry+https://github.com/rust-lang/crates.io-index"', f'checksum = "{r.s(HEX, 64)}"', ""]
            labs.append(len(lines) - 1)
        p = self.path_for("lock", "Cargo.lock", fixed="cargolock")
        self.files[p] = lines
        for ln in labs:
            self.label(p, ln, ln, "neg", "lockfile-integrity")
        lines, labs = ["# THIS IS AN AUTOGENERATED FILE. DO NOT EDIT THIS FILE DIRECTLY.", ""], []
        for i in range(50):
            n = f"{w(r)}-{w(r)}"
            lines += [f'"{n}@^1.{i}.0":', f'  version "1.{i}.3"', f'  resolved "https://registry.yarnpkg.com/{n}/-/{n}-1.{i}.3.tgz#{r.s(HEX, 40)}"',
                      f"  integrity sha512-{b64s(r.b(64))}", ""]
            labs += [len(lines) - 2, len(lines) - 1]
        p = self.path_for("lock", "yarn.lock", fixed="yarnlock")
        self.files[p] = lines
        for ln in labs:
            self.label(p, ln, ln, "neg", "lockfile-integrity")
        # minified JS: a few very long lines with mangled identifiers and data URIs
        for j in range(3):
            lines = [f"/*! acme-ui v{j}.4.1 | MIT */"]
            for k in range(4):
                parts = []
                for q in range(400):
                    t = r.i(0, 5)
                    if t == 0:
                        parts.append(f"var _0x{r.s(HEX, 6)}=['{r.s(ALNUM, 32)}','{r.s(ALNUM, 40)}'];")
                    elif t == 1:
                        parts.append(f"function {r.s(LOWER, 2)}({r.s(LOWER, 1)},{r.s(LOWER, 1)}){{return {r.s(LOWER, 1)}.{r.s(LOWER, 2)}({r.s(LOWER, 1)})}}")
                    elif t == 2:
                        parts.append(f"{r.s(LOWER, 1)}.src=\"data:image/png;base64,{b64s(PNG + r.b(r.i(60, 300)))}\";")
                    elif t == 3:
                        parts.append(f"const {r.s(UPPER + LOWER, 1)}{r.s(ALNUM, 30)}={r.i(0, 99999)};")
                    else:
                        parts.append(f"e.exports={{key:\"{r.s(ALNUM, 20)}\",hash:\"{r.s(HEX, 40)}\"}};")
                lines.append("".join(parts))
            lines.append(f"//# sourceMappingURL=acme-ui.{r.s(HEX, 8)}.min.js.map")
            p = self.path_for("min", ".min.js", fixed=f"vendor-{j}")
            self.files[p] = lines
            self.label(p, 2, 5, "neg", "minified-code")
        # source map
        p = self.path_for("min", ".js.map", fixed="bundle")
        mappings = ";".join(",".join(r.s(B64, r.i(4, 8)) for _ in range(20)) for _ in range(200))
        self.files[p] = ['{"version":3,"sources":["src/index.ts"],"names":[],', f'"mappings":"{mappings}"}}']
        self.label(p, 2, 2, "neg", "minified-code")
        # CSS / HTML with base64 images and fonts
        lines, labs = [], []
        for i in range(20):
            lines += [f".icon-{w(r)}-{i} {{", f"  background-image: url(data:image/png;base64,{b64s(PNG + r.b(r.i(200, 900)))});", "  width: 16px;", "}"]
            labs.append(len(lines) - 2)
        lines += ["@font-face {", "  font-family: 'Acme';", f"  src: url(data:font/woff2;base64,{b64s(b'wOF2' + r.b(6000))}) format('woff2');", "}"]
        labs.append(len(lines) - 1)
        p = self.path_for("css", ".css", fixed="icons")
        self.files[p] = lines
        for ln in labs:
            self.label(p, ln, ln, "neg", "base64-data")
        p = self.path_for("css", ".md", fixed="logo")
        self.files[p] = ["# Logo", "", f"![logo](data:image/png;base64,{b64s(PNG + r.b(2500))})", ""]
        self.label(p, 3, 3, "neg", "base64-data")

    # ---- assembly ----
    def path_for(self, kind, ext, fixed=None):
        r = self.r
        d = r.choice(DIRS)
        base = fixed or (ident(r) if kind not in ("env",) else "")
        if ext.startswith("."):
            name = (base or r.choice(["", "prod", "staging", "local"])) + ext if kind != "env" else (".env" + r.choice(["", ".production", ".local", ".staging"]))
        else:
            name = ext
        p = f"{d}/{name}"
        for d2 in DIRS:
            if p not in self.files:
                break
            p = f"{d2}/{name}"
        n = 2
        while p in self.files:
            stem, dot, ext2 = name.rpartition(".")
            p = f"{d}/{stem}-{n}.{ext2}" if dot and stem else f"{d}/{n}/{name}"
            n += 1
        return p

    def label(self, path, start, end, sign, what):
        if sign == "pos":
            self.labels["positives"].append({"file": path, "line": start, "end_line": end, "type": what})
        else:
            self.labels["negatives"].append({"file": path, "line": start, "end_line": end, "kind": what})

    def assemble(self):
        r = self.r
        kinds = sorted(self.snips)
        for kind in kinds:
            snips = self.snips[kind]
            r.shuffle(snips)
            per = {"agekeys": 1, "npmrc": 2, "pypirc": 2, "awscreds": 3, "gitconfig": 2, "pem": 1, "ppk": 1, "asc": 1, "http": 2, "k8s": 4}.get(kind, 6)
            for start in range(0, len(snips), per):
                self.write_file(kind, snips[start:start + per])

    def write_file(self, kind, snips):
        r = self.r
        fk = {"agekeys": "txt", "json": "txt", "k8s": "yaml", "npmrc": "txt", "pypirc": "ini", "awscreds": "ini", "gitconfig": "txt", "pem": "txt",
              "ppk": "txt", "asc": "txt", "http": "txt", "html": "txt"}.get(kind, kind)
        ext = KIND_EXT.get(kind, "." + kind)
        if kind == "k8s":
            path = self.path_for(kind, ".yaml", fixed=f"secret-{w(r)}")
        elif kind == "pem":
            path = self.path_for(kind, r.choice([".pem", ".key", "id_ed25519" if "OPENSSH" in snips[0].lines[0] else ".pem"]))
        elif kind == "ppk":
            path = self.path_for(kind, ".ppk")
        elif kind == "asc":
            path = self.path_for(kind, ".asc")
        elif kind == "html":
            path = self.path_for(kind, ".html")
        else:
            path = self.path_for(kind, ext)
        lines: list[str] = []
        head = {"py": ["import logging", "import os", "", "logger = logging.getLogger(__name__)", ""],
                "go": ["package config", "", 'import (', '\t"context"', '\t"fmt"', '\t"os"', '\t"time"', ")", ""],
                "rs": ["use std::env;", ""], "java": ["package com.acme.config;", "", "public class AppConfig {"],
                "rb": ["module Acme", "  class Settings"], "sh": ["#!/usr/bin/env bash", "set -euo pipefail", ""],
                "docker": ["FROM node:20-bookworm-slim", "WORKDIR /app"], "json": ["{"],
                "k8s": ["apiVersion: v1", "kind: Secret", "metadata:", f"  name: {w(r)}-secrets", "type: Opaque", "stringData:"],
                "tf": ['terraform {', '  required_version = ">= 1.5"', "}", ""], "xml": ['<?xml version="1.0" encoding="utf-8"?>', "<configuration>", "  <appSettings>"],
                "md": [f"# {w(r).title()} {w(r)} runbook", ""], "html": ["<!doctype html>", "<html><head>"],
                "http": ["### generated requests", ""]}.get(kind, [])
        tail = {"java": ["}"], "rb": ["  end", "end"], "json": ['  "generated": true', "}"], "xml": ["  </appSettings>", "</configuration>"],
                "html": ["</head><body></body></html>"]}.get(kind, [])
        lines += head
        big = kind in ("py", "js", "go", "rs", "java", "rb", "sh", "yaml", "md", "log", "tf")
        for s in snips:
            if kind == "json":
                n = r.i(1, 6)
                for _ in range(n):
                    lines.append(f'  "{w(r)}_{w(r)}": {r.choice([str(r.i(0, 999)), "true", json.dumps(w(r))])},')
            elif kind in ("agekeys", "k8s", "npmrc", "pypirc", "awscreds", "gitconfig", "pem", "ppk", "asc", "http", "html"):
                if kind in ("npmrc",) and lines:
                    lines.append("registry=https://registry.npmjs.org/")
                if kind in ("pem", "asc", "ppk") and lines:
                    lines.append("")
            else:
                n = r.i(20, 160) if big else r.i(2, 12)
                fl = filler(r, fk, n)
                if kind == "java":
                    fl = [x if x.startswith("    ") else "    " + x for x in fl]
                if kind == "rb":
                    fl = ["  " + x for x in fl]
                if kind == "xml":
                    fl = [x if x.startswith("    <") else f"    <!-- {x} -->" for x in fl]
                lines += fl
            base = len(lines)
            slines = s.lines
            if kind == "java":
                slines = [x if x.startswith("    ") else "    " + x for x in slines]
            if kind == "rb":
                slines = [x if x.startswith("  ") else "  " + x for x in slines]
            lines += slines
            for (a, b, sign, what) in s.labels:
                self.label(path, base + a + 1, base + b + 1, sign, what)
        if kind not in ("agekeys", "json", "k8s", "npmrc", "pypirc", "awscreds", "gitconfig", "pem", "ppk", "asc", "http", "html"):
            lines += filler(r, fk, r.i(5, 60) if big else 3)
        lines += tail
        self.files[path] = lines

    def write(self, out: str):
        for path, lines in sorted(self.files.items()):
            full = os.path.join(out, path)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "w", encoding="utf-8", newline="\n") as f:
                f.write("\n".join(lines) + "\n")
        for k in ("positives", "negatives"):
            self.labels[k].sort(key=lambda d: (d["file"], d["line"]))
        pos_types = sorted({p["type"] for p in self.labels["positives"]})
        missing = sorted(set(ALL_TYPES) - set(pos_types))
        if missing:
            raise SystemExit(f"corpus.py: internal error, types without positives: {missing}")
        meta = {"generator": "bench/scan/corpus.py", "seed": self.seed, "types": ALL_TYPES,
                "files": len(self.files), "bytes": sum(len("\n".join(v)) + 1 for v in self.files.values())}
        with open(os.path.join(out, "labels.json"), "w", encoding="utf-8") as f:
            json.dump({"meta": meta, **self.labels}, f, indent=1)
            f.write("\n")
        with open(os.path.join(out, "README"), "w", encoding="utf-8") as f:
            f.write(README.format(seed=self.seed, files=meta["files"], bytes=meta["bytes"],
                                  npos=len(self.labels["positives"]), nneg=len(self.labels["negatives"]), ntypes=len(pos_types)))
        return meta


README = """This directory is a SYNTHETIC secret-scanning corpus generated by bench/scan/corpus.py
(seed {seed}). Every credential-looking value in it was drawn from a seeded pseudo-random
generator: none is a real, live or leaked credential, and none was copied from anywhere.
Documented example values (AWS's documentation key pair, the jwt.io sample, the Azurite
development storage key, ...) appear only as labelled NEGATIVES.

labels.json lists {npos} positives over {ntypes} secret types and {nneg} labelled hard negatives
(1-based lines; end_line > line for multi-line keys). {files} files, {bytes} bytes.
Regenerate with: python3 bench/scan/corpus.py --out DIR --seed {seed}
"""


def build(out: str, seed: int) -> dict:
    c = Corpus(seed)
    c.seed = seed
    c.positives()
    c.negatives()
    c.bulk_files()
    c.assemble()
    if os.path.exists(out):
        # only ever clear a directory that this script created before
        if os.listdir(out) and not os.path.exists(os.path.join(out, "labels.json")):
            raise SystemExit(f"corpus.py: {out} exists, is not empty and holds no labels.json; refusing to overwrite")
        shutil.rmtree(out)
    os.makedirs(out)
    return c.write(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output directory (created; replaced if it holds an earlier corpus)")
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args(argv)
    meta = build(a.out, a.seed)
    with open(os.path.join(a.out, "labels.json")) as f:
        lab = json.load(f)
    print(f"corpus: {meta['files']} files, {meta['bytes']} bytes, {len(lab['positives'])} positives "
          f"({len(set(p['type'] for p in lab['positives']))} types), {len(lab['negatives'])} negatives -> {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
