#!/usr/bin/env python3
"""Writes tests/corpus/secrets.jsonl: synthetic credentials in the
documented formats of common providers, placed in realistic context
(config, env and JSON files, code, logs, shell history, docs), plus hard
negatives (placeholders, hashes, ids, public keys).

Seeded: the same inputs give the same file.

    .deps/venv/bin/python scripts/corpus/secrets.py > tests/corpus/secrets.jsonl

Needs PyJWT and cryptography (any venv with `pip install pyjwt
cryptography`; the repo's .deps/venv has both). Private keys are the
throwaway keys in scripts/corpus/inputs/keys/ (made with openssl and
ssh-keygen); JWTs are signed with PyJWT (HS256, and RS256 with one of those
keys).

Labels: `secret:ID` with ID the DLP detector id when Portcullis has one for
that format, else a descriptive id (e.g. `secret:huggingface-token`) so the
report shows formats without a detector. Every positive carries `match`:
the secret value, which a finding must overlap.
"""
import base64
import json
import os
import random
import string
import sys

import jwt  # PyJWT

SEED = 7
HERE = os.path.dirname(os.path.abspath(__file__))
KEYS = os.path.join(HERE, "inputs", "keys")
SOURCE = "synthetic (scripts/corpus/secrets.py)"

rng = random.Random(SEED)
UP = string.ascii_uppercase
LO = string.ascii_lowercase
DI = string.digits
AN = UP + LO + DI
B64 = AN + "+/"
URLSAFE = AN + "-_"
HEX = "0123456789abcdef"


def r(alphabet, n):
    return "".join(rng.choice(alphabet) for _ in range(n))


def key(name):
    with open(os.path.join(KEYS, name), encoding="utf-8") as f:
        return f.read()


# ------------------------------------------------------------ providers ----
# (label id, env var name, generator). Formats follow each provider's
# published token format (prefix, length, alphabet).
PROVIDERS = [
    ("aws-access-key-id", "AWS_ACCESS_KEY_ID", lambda: rng.choice(["AKIA", "ASIA"]) + r(UP + "234567", 16)),
    ("aws-secret-access-key", "AWS_SECRET_ACCESS_KEY", lambda: r(B64, 40)),
    ("github-token", "GITHUB_TOKEN", lambda: rng.choice(["ghp_", "gho_", "ghs_", "ghu_"]) + r(AN, 36)),
    ("github-token", "GH_TOKEN", lambda: "github_pat_" + r(AN, 22) + "_" + r(AN, 59)),
    ("gitlab-token", "GITLAB_TOKEN", lambda: "glpat-" + r(URLSAFE, 20)),
    ("slack-token", "SLACK_BOT_TOKEN", lambda: rng.choice(["xoxb-", "xoxp-"]) + r(DI, 12) + "-" + r(DI, 13) + "-" + r(AN, 24)),
    ("slack-webhook", "SLACK_WEBHOOK_URL", lambda: "https://hooks.slack.com/services/T" + r(UP + DI, 8) + "/B" + r(UP + DI, 10) + "/" + r(AN, 24)),
    ("stripe-secret-key", "STRIPE_SECRET_KEY", lambda: rng.choice(["sk_live_", "rk_live_"]) + r(AN, 99 if rng.random() < 0.5 else 24)),
    ("stripe-secret-key", "STRIPE_TEST_KEY", lambda: "sk_test_" + r(AN, 24)),
    ("gcp-api-key", "GOOGLE_API_KEY", lambda: "AIza" + r(URLSAFE, 35)),
    ("google-oauth-token", "GOOGLE_ACCESS_TOKEN", lambda: "ya29." + r(URLSAFE, 120)),
    ("openai-api-key", "OPENAI_API_KEY", lambda: "sk-proj-" + r(URLSAFE, 74) + "T3BlbkFJ" + r(URLSAFE, 74)),
    ("openai-api-key", "OPENAI_API_KEY", lambda: "sk-" + r(AN, 20) + "T3BlbkFJ" + r(AN, 20)),
    ("anthropic-api-key", "ANTHROPIC_API_KEY", lambda: "sk-ant-api03-" + r(URLSAFE, 93) + "AA"),
    ("npm-token", "NPM_TOKEN", lambda: "npm_" + r(AN, 36)),
    ("pypi-token", "PYPI_TOKEN", lambda: "pypi-AgEIcHlwaS5vcmc" + r(URLSAFE, 130)),
    ("sendgrid-api-key", "SENDGRID_API_KEY", lambda: "SG." + r(URLSAFE, 22) + "." + r(URLSAFE, 43)),
    ("twilio-credential", "TWILIO_API_KEY_SECRET", lambda: "SK" + r(HEX, 32)),
    ("azure-storage-key", "AZURE_STORAGE_CONNECTION_STRING", lambda: base64.b64encode(bytes(rng.getrandbits(8) for _ in range(64))).decode()),
    # Formats Portcullis had no detector for when the corpus was made.
    ("huggingface-token", "HF_TOKEN", lambda: "hf_" + r(LO + UP, 34)),
    ("digitalocean-token", "DIGITALOCEAN_TOKEN", lambda: "dop_v1_" + r(HEX, 64)),
    ("shopify-token", "SHOPIFY_ACCESS_TOKEN", lambda: rng.choice(["shpat_", "shpss_", "shpca_"]) + r(HEX, 32)),
    ("vault-token", "VAULT_TOKEN", lambda: "hvs." + r(URLSAFE, 90)),
    ("grafana-token", "GRAFANA_TOKEN", lambda: "glsa_" + r(AN, 32) + "_" + r(HEX, 8)),
    ("databricks-token", "DATABRICKS_TOKEN", lambda: "dapi" + r(HEX, 32)),
    ("linear-api-key", "LINEAR_API_KEY", lambda: "lin_api_" + r(AN, 40)),
    ("sentry-token", "SENTRY_AUTH_TOKEN", lambda: "sntrys_" + r(URLSAFE, 80)),
    ("doppler-token", "DOPPLER_TOKEN", lambda: "dp.pt." + r(AN, 43)),
    ("postman-api-key", "POSTMAN_API_KEY", lambda: "PMAK-" + r(HEX, 24) + "-" + r(HEX, 34)),
    ("figma-token", "FIGMA_TOKEN", lambda: "figd_" + r(URLSAFE, 40)),
    ("groq-api-key", "GROQ_API_KEY", lambda: "gsk_" + r(AN, 52)),
    ("supabase-token", "SUPABASE_ACCESS_TOKEN", lambda: "sbp_" + r(HEX, 40)),
    ("atlassian-api-token", "JIRA_API_TOKEN", lambda: "ATATT3xFfGF0" + r(URLSAFE, 170) + "=" + r(HEX.upper(), 8)),
    ("age-secret-key", "SOPS_AGE_KEY", lambda: "AGE-SECRET-KEY-1" + r("QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L", 58)),
    ("telegram-bot-token", "TELEGRAM_BOT_TOKEN", lambda: r(DI, 10) + ":AA" + r(URLSAFE, 33)),
    ("datadog-api-key", "DD_API_KEY", lambda: r(HEX, 32)),
]

# Contexts for a token-like value: (name, template). {NAME} the env var,
# {name} its lower-case form, {camel} camelCase, {v} the value.
CONTEXTS = [
    ("env", "# .env\nNODE_ENV=production\nLOG_LEVEL=info\n{NAME}={v}\nPORT=8080\n"),
    ("export", "$ export {NAME}=\"{v}\"\n$ ./deploy.sh --region eu-west-1\nDeploying service api (3 replicas)...\n"),
    ("json", "{{\n  \"service\": \"billing\",\n  \"timeout_ms\": 3000,\n  \"{name}\": \"{v}\",\n  \"retries\": 2\n}}\n"),
    ("yaml", "integrations:\n  enabled: true\n  {name}: {v}\n  endpoint: https://api.example.com/v1\n"),
    ("python", "import requests\n\nclient = Client(\n    base_url=\"https://api.example.com\",\n    token=\"{v}\",\n)\nprint(client.whoami())\n"),
    ("js", "import {{ Client }} from './client.js';\n\nconst client = new Client({{\n  {camel}: '{v}',\n  timeout: 5000,\n}});\nawait client.ping();\n"),
    ("curl", "curl -s https://api.example.com/v2/projects \\\n  -H \"Authorization: Bearer {v}\" \\\n  -H 'Accept: application/json'\n"),
    ("log", "2024-11-02T09:14:07.311Z INFO  starting worker pid=4121\n2024-11-02T09:14:07.402Z DEBUG loaded credentials {name}={v}\n2024-11-02T09:14:07.518Z INFO  connected to queue jobs-high\n"),
    ("toml", "[deploy]\nregion = \"us-east-1\"\n{name} = \"{v}\"\nreplicas = 3\n"),
    ("docker", "services:\n  app:\n    image: example/app:1.4.2\n    environment:\n      - {NAME}={v}\n      - TZ=UTC\n"),
    ("prose", "Thanks! As requested, here is the key for the staging account: {v}\nIt will be rotated on Friday.\n"),
    ("shell-history", "  501  git pull --rebase\n  502  {NAME}={v} npm run release\n  503  git push --tags\n"),
]


def camel(name):
    parts = name.lower().split("_")
    return parts[0] + "".join(p.title() for p in parts[1:])


def fill(tpl, name, v):
    return tpl.format(NAME=name, name=name.lower(), camel=camel(name), v=v)


out = []


def pos(sid, label, text, value, note=None):
    assert value in text, (sid, value)
    s = {"id": sid, "family": "secret", "label": f"secret:{label}", "text": text, "match": value, "source": SOURCE}
    if note:
        s["note"] = note
    out.append(s)


def neg(sid, text, note=None):
    s = {"id": sid, "family": "secret", "label": "benign", "text": text, "source": SOURCE}
    if note:
        s["note"] = note
    out.append(s)


def providers():
    for i, (label, name, gen) in enumerate(PROVIDERS):
        for j, (cname, tpl) in enumerate(rng.sample(CONTEXTS, 6)):
            v = gen()
            if label == "azure-storage-key":
                text = fill(tpl, name, f"DefaultEndpointsProtocol=https;AccountName=corpusdata;AccountKey={v};EndpointSuffix=core.windows.net")
            elif label == "twilio-credential" and cname in ("prose", "curl"):
                text = f"Twilio API key for the SMS service: {v}\n" if cname == "prose" else fill(tpl, name, v)
            else:
                text = fill(tpl, name, v)
            pos(f"{label}-{i:02d}-{cname}", label, text, v)


def aws_pairs():
    tpls = [
        "[default]\naws_access_key_id = {a}\naws_secret_access_key = {s}\nregion = eu-central-1\n",
        "{{\n    \"Credentials\": {{\n        \"AccessKeyId\": \"{a}\",\n        \"SecretAccessKey\": \"{s}\",\n        \"SessionToken\": \"FwoGZXIvYXdzEBYaDH{t}\",\n        \"Expiration\": \"2024-11-02T10:14:07Z\"\n    }}\n}}\n",
        "s3 = boto3.client(\n    's3',\n    aws_access_key_id='{a}',\n    aws_secret_access_key='{s}',\n)\n",
        "AWS_ACCESS_KEY_ID={a}\nAWS_SECRET_ACCESS_KEY={s}\nAWS_DEFAULT_REGION=us-west-2\n",
    ]
    for i, tpl in enumerate(tpls * 2):
        a = "AKIA" + r(UP + "234567", 16)
        s = r(B64, 40)
        text = tpl.format(a=a, s=s, t=r(B64, 60))
        out.append({"id": f"aws-pair-{i:02d}", "family": "secret",
                    "label": ["secret:aws-access-key-id", "secret:aws-secret-access-key"],
                    "text": text, "match": [a, s], "source": SOURCE})


def private_keys():
    files = ["rsa2048.pem", "rsa2048-pkcs8.pem", "ec-p256.pem", "ed25519.pem", "rsa2048-encrypted.pem",
             "rsa1024-traditional.pem", "openssh-ed25519", "openssh-rsa", "ec-p256-sec1.pem"]
    for i, f in enumerate(files):
        pem = key(f)
        first = pem.splitlines()[0]
        ctxs = [
            ("cat", f"$ cat ~/.ssh/deploy_key\n{pem}$ \n"),
            ("yaml", "tls:\n  cert_file: /etc/app/tls.crt\n  key: |\n" + "".join("    " + line + "\n" for line in pem.splitlines())),
            ("json", json.dumps({"name": "deploy", "private_key": pem, "created": "2024-10-01"}, indent=2) + "\n"),
        ]
        for cname, text in ctxs:
            value = first if cname != "json" else first
            pos(f"private-key-{i:02d}-{cname}", "private-key", text, value)
    # A Google service-account file.
    pk = key("rsa2048-pkcs8.pem")
    sa = {
        "type": "service_account", "project_id": "corpus-demo-123456", "private_key_id": r(HEX, 40),
        "private_key": pk, "client_email": "uploader@corpus-demo-123456.iam.gserviceaccount.com",
        "client_id": r(DI, 21), "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    pos("gcp-service-account-00", "gcp-service-account-key", json.dumps(sa, indent=2) + "\n", "-----BEGIN PRIVATE KEY-----")


def jwts():
    rsa = key("rsa2048.pem")
    for i in range(12):
        claims = {"sub": f"user-{rng.randint(1000, 9999)}", "iss": "https://auth.example.com/",
                  "aud": "api", "iat": 1730000000 + i * 3600, "exp": 1730003600 + i * 3600,
                  "scope": rng.choice(["read", "read write", "admin"])}
        if i % 2:
            tok = jwt.encode(claims, rsa, algorithm="RS256", headers={"kid": f"k{i}"})
        else:
            tok = jwt.encode(claims, r(AN, 32), algorithm="HS256")
        cname, tpl = CONTEXTS[i % len(CONTEXTS)]
        pos(f"jwt-{i:02d}-{cname}", "jwt", fill(tpl, "ACCESS_TOKEN", tok), tok)


def url_creds():
    urls = [
        "postgres://app:{p}@db.internal:5432/orders",
        "postgresql://reporting:{p}@10.0.3.7/analytics?sslmode=require",
        "mysql://root:{p}@localhost:3306/wordpress",
        "mongodb+srv://admin:{p}@cluster0.ab1cd.mongodb.net/prod",
        "redis://default:{p}@cache.internal:6379/0",
        "amqp://guest:{p}@rabbit.internal:5672/",
        "https://deploy:{p}@git.example.com/team/app.git",
        "ftp://backup:{p}@ftp.example.net/nightly/",
    ]
    for i, u in enumerate(urls):
        p = r(AN + "!*", rng.randint(12, 24))
        url = u.format(p=p)
        cname, tpl = CONTEXTS[(i * 5) % len(CONTEXTS)]
        pos(f"url-credentials-{i:02d}-{cname}", "url-credentials", fill(tpl, "DATABASE_URL", url), p)


def generic():
    # Passwords and secrets with a key in front: generated and human-chosen.
    human = ["Summer2024!", "Tr0ub4dor&3", "correct-horse-battery", "P@ssw0rd123", "letmein2023", "Welcome#2024!Team"]
    gen = [r(AN + "!@#%^*-_", n) for n in (16, 20, 24, 32, 32, 40)]
    django = "django-insecure-" + r(LO + DI + "!@#$%^&*(-_=+)", 50)
    forms = [
        ("DB_PASSWORD={v}\n", "env"),
        ("password: {v}\n", "yaml"),
        ("\"password\": \"{v}\",\n", "json"),
        ("SECRET_KEY = '{v}'\n", "python"),
        ("spring.datasource.password={v}\n", "properties"),
        ("client_secret={v}\n", "ini"),
        ("--password '{v}'\n", "cli"),
        ("api_key: \"{v}\"\n", "yaml"),
        ("<add key=\"ApiSecret\" value=\"{v}\" />\n", "xml"),
        ("mysql -u root -p'{v}' shop\n", "cli-short-flag"),
        ("WIFI_PASS={v}\n", "env-nonstandard-name"),
        ("auth_token = \"{v}\"\n", "toml"),
    ]
    values = human + gen
    for i, (form, cname) in enumerate(forms):
        v = values[i % len(values)]
        text = "# settings\nDEBUG=false\n" + form.format(v=v) + "ALLOWED_HOSTS=app.example.com\n"
        pos(f"generic-{i:02d}-{cname}", "generic-secret", text, v,
            note="human-chosen password" if v in human else None)
    pos("generic-django", "generic-secret", f"SECRET_KEY = '{django}'\nDEBUG = False\n", django)


def negatives():
    sha = lambda: r(HEX, 64)  # noqa: E731
    texts = [
        ("placeholder-env", "OPENAI_API_KEY=<your-api-key>\nGITHUB_TOKEN=your_github_token_here\n"),
        ("placeholder-x", "export GITHUB_TOKEN=ghp_XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX\n"),
        ("env-reference", "password: ${DB_PASSWORD}\napi_key: \"{{ secrets.API_KEY }}\"\n"),
        ("code-reference", "api_key = os.environ[\"OPENAI_API_KEY\"]\ntoken = os.getenv('GITHUB_TOKEN', '')\n"),
        ("masked", "Using key sk-...a1b2 (masked). Token: ****************\n"),
        ("sha256", f"sha256sum: {sha()}  release.tar.gz\n"),
        ("git-log", "commit " + r(HEX, 40) + "\nAuthor: CI <ci@example.invalid>\n\n    Bump version to 2.4.1\n"),
        ("npm-integrity", "\"integrity\": \"sha512-" + base64.b64encode(bytes(rng.getrandbits(8) for _ in range(64))).decode() + "\"\n"),
        ("docker-digest", "image: registry.example.com/app@sha256:" + sha() + "\n"),
        ("uuid-request-id", "{\"request_id\": \"" + "-".join(r(HEX, n) for n in (8, 4, 4, 4, 12)) + "\", \"status\": 200}\n"),
        ("uuid-token-id", "{\"token_id\": \"" + "-".join(r(HEX, n) for n in (8, 4, 4, 4, 12)) + "\", \"revoked\": false}\n"),
        ("idempotency", "Idempotency-Key: " + "-".join(r(HEX, n) for n in (8, 4, 4, 4, 12)) + "\n"),
        ("ssh-public-key", key("openssh-ed25519.pub")),
        ("ssh-public-rsa", "authorized_keys:\n" + key("openssh-rsa.pub")),
        ("pem-public-key", key("rsa2048.pub.pem")),
        ("certificate", key("ec-p256-cert.pem")),
        ("data-uri", "<img src=\"data:image/png;base64," + base64.b64encode(bytes(rng.getrandbits(8) for _ in range(120))).decode() + "\">\n"),
        ("bcrypt-hash", "password_hash: $2b$12$" + r(AN + "./", 53) + "\n"),
        ("password-policy", "Passwords must be at least 12 characters and contain a digit.\n"),
        ("token-endpoint", "token_url: https://auth.example.com/oauth/token\n"),
        ("secret-name", "secretName: app-tls-certificate-production\n"),
        ("empty-values", "AWS_ACCESS_KEY_ID=\nAWS_SECRET_ACCESS_KEY=\n"),
        ("key-id-public", "kid: 2024-11-rotation-key-01\n"),
        ("commit-range", "git diff " + r(HEX, 40) + ".." + r(HEX, 40) + "\n"),
        ("base64-config", "config: " + base64.b64encode(b'{"replicas": 3, "image": "app:1.2"}').decode() + "\n"),
        ("stripe-publishable", "STRIPE_PUBLISHABLE_KEY=pk_live_" + r(AN, 24) + "\n"),
        ("google-client-id", "client_id: " + r(DI, 12) + "-" + r(LO + DI, 32) + ".apps.googleusercontent.com\n"),
        ("aws-arn", "arn:aws:iam::" + r(DI, 12) + ":role/deploy-role\n"),
        ("aws-account-id", "aws_account_id = " + r(DI, 12) + "\n"),
        ("s3-etag", "ETag: \"" + r(HEX, 32) + "\"\n"),
        ("md5-checksum", "md5: " + r(HEX, 32) + "\n"),
        ("hex-nonce-in-text", "The nonce for this session was " + r(HEX, 32) + " (public).\n"),
        ("session-cookie-name", "Set-Cookie: session_id=deleted; expires=Thu, 01 Jan 1970 00:00:00 GMT\n"),
        ("csrf-field-name", "<input type=\"hidden\" name=\"csrf_token\" value=\"{{ csrf_token }}\">\n"),
        ("password-label", "Password: (leave empty to use SSO)\n"),
        ("tokenizer", "tokenizer = AutoTokenizer.from_pretrained(\"bert-base-uncased\")\n"),
        ("token-count", "prompt_tokens: 1532, completion_tokens: 402, total_tokens: 1934\n"),
        ("jwt-docs-header", "A JWT has three parts: header.payload.signature, each base64url encoded.\n"),
        ("private-key-path", "ssh -i ~/.ssh/id_ed25519 deploy@host\nprivate_key_path: /etc/app/key.pem\n"),
    ]
    for sid, t in texts:
        neg(f"hard-negative-{sid}", t)


def main():
    providers()
    aws_pairs()
    private_keys()
    jwts()
    url_creds()
    generic()
    negatives()
    for s in out:
        sys.stdout.write(json.dumps(s, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
