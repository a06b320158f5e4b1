// A real OpenID Connect provider for agv-server's single sign-on tests: panva's
// oidc-provider (OpenID Certified), with one confidential client and a sign-in page of its
// own that signs in whatever email is typed (no password: the tests are about agv-server's
// side of the protocol, not about checking passwords).
//
//   node tests/oidc/provider.mjs [PORT]      (PORT, or $OIDC_PORT, or 0 for any free port)
//
// Environment: OIDC_CLIENT_ID, OIDC_CLIENT_SECRET, OIDC_REDIRECT_URIS (comma-separated),
// OIDC_HOST (the issuer's host name, default localhost; the server listens on 127.0.0.1),
// OIDC_AUTH_METHOD (client_secret_basic (default) or client_secret_post: then a token
// request with a Basic authorization header is refused with invalid_client).
// When it listens it prints its issuer URL, alone, on the first line of stdout.
//
// The sign-in page has an email field (the account id and its email claim), a groups
// field (comma-separated; the `groups` claim) and an "email not verified" checkbox (the
// `email_verified` claim false). PKCE is required of every authorization request. The
// `email`, `profile` and `groups` claims are released to the client without a consent
// screen (a first-party client), through the userinfo endpoint: like most conforming
// providers, the ID token of the code flow carries only `sub` and the protocol claims.

import http from "node:http";
import { generateKeyPairSync } from "node:crypto";
import Provider from "oidc-provider";

const port = Number(process.argv[2] ?? process.env.OIDC_PORT ?? 0);
const host = process.env.OIDC_HOST || "localhost";
const clientId = process.env.OIDC_CLIENT_ID || "agv-console";
const clientSecret = process.env.OIDC_CLIENT_SECRET || "agv-console-secret";
const redirectUris = (process.env.OIDC_REDIRECT_URIS || "http://127.0.0.1:8080/api/auth/oidc/callback")
  .split(",").map((s) => s.trim()).filter(Boolean);
const authMethod = process.env.OIDC_AUTH_METHOD || "client_secret_basic";

// What the sign-in page was told about each account: its groups and whether its email is
// verified.
const accounts = new Map();

function signingKeys() {
  const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey.export({ format: "jwk" });
  const ec = generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey.export({ format: "jwk" });
  return [{ ...rsa, kid: "rsa-1", use: "sig", alg: "RS256" }, { ...ec, kid: "ec-1", use: "sig", alg: "ES256" }];
}

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(title, body) {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>${escape(title)}</title>
<style>body{font-family:system-ui,sans-serif;background:#eef1f6;display:grid;place-items:center;min-height:100vh;margin:0}
form{background:#fff;padding:2rem;border-radius:10px;box-shadow:0 2px 10px #0002;display:grid;gap:.8rem;width:320px}
h1{font-size:1.3rem;margin:0 0 .5rem}label{display:grid;gap:.3rem;font-size:.9rem}
input[type=email],input[type=text]{padding:.55rem;font-size:1rem;border:1px solid #bbb;border-radius:6px}
button{padding:.6rem;font-size:1rem;background:#1f5fd6;color:#fff;border:0;border-radius:6px}</style>
</head><body>${body}</body></html>`;
}

function loginPage(uid, client) {
  return page("Test identity provider", `<form method="post" action="/interaction/${escape(uid)}/login" id="idp-login">
<h1>Test identity provider</h1><p>Sign in to ${escape(client)}</p>
<label>Email <input type="email" name="email" id="idp-email" required autofocus></label>
<label>Groups (comma-separated) <input type="text" name="groups" id="idp-groups"></label>
<label><input type="checkbox" name="unverified" value="1" id="idp-unverified"> email not verified</label>
<button type="submit" id="idp-submit">Sign in</button></form>`);
}

async function readForm(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  return new URLSearchParams(Buffer.concat(chunks).toString("utf8"));
}

const server = http.createServer();
server.listen(port, "127.0.0.1", () => {
  const issuer = `http://${host}:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients: [{
      client_id: clientId,
      client_secret: clientSecret,
      redirect_uris: redirectUris,
      grant_types: ["authorization_code"],
      response_types: ["code"],
      token_endpoint_auth_method: authMethod,
    }],
    jwks: { keys: signingKeys() },
    cookies: { keys: ["agv-test-provider-cookie-key"] },
    pkce: { required: () => true },
    claims: {
      openid: ["sub"],
      email: ["email", "email_verified"],
      profile: ["name"],
      groups: ["groups"],
    },
    features: { devInteractions: { enabled: false } },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    async findAccount(ctx, id) {
      const seen = accounts.get(id) ?? { groups: [], verified: true };
      return {
        accountId: id,
        async claims() {
          return { sub: id, email: id, email_verified: seen.verified, name: id.split("@")[0], groups: seen.groups };
        },
      };
    },
    // A first-party client: everything it asks for is granted without a consent screen.
    async loadExistingGrant(ctx) {
      const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) {
        const found = await ctx.oidc.provider.Grant.find(grantId);
        if (found) return found;
      }
      const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
      grant.addOIDCScope("openid email profile groups");
      grant.addOIDCClaims(["email", "email_verified", "name", "groups"]);
      await grant.save();
      return grant;
    },
  });
  const callback = provider.callback();
  server.on("request", async (req, res) => {
    const url = new URL(req.url, issuer);
    // oidc-provider takes either secret method from any confidential client; some
    // providers (Okta, for one) accept only the one the client was registered with. With
    // OIDC_AUTH_METHOD=client_secret_post this one does too.
    if (authMethod === "client_secret_post" && url.pathname === "/token" && req.headers.authorization) {
      res.writeHead(401, { "content-type": "application/json" });
      return res.end(JSON.stringify({ error: "invalid_client", error_description: "this client authenticates with client_secret_post" }));
    }
    // Browsers ask every site for one; a 404 would show as an error in their console.
    if (url.pathname === "/favicon.ico") return res.writeHead(204).end();
    const m = url.pathname.match(/^\/interaction\/([^/]+)(\/login)?$/);
    if (!m) return callback(req, res);
    try {
      const details = await provider.interactionDetails(req, res);
      if (details.uid !== m[1]) throw new Error("this sign-in is not the one in progress");
      if (!m[2] && req.method === "GET") {
        res.writeHead(200, { "content-type": "text/html; charset=utf-8", "cache-control": "no-store" });
        return res.end(loginPage(details.uid, details.params.client_id));
      }
      if (m[2] && req.method === "POST") {
        const form = await readForm(req);
        const email = (form.get("email") || "").trim().toLowerCase();
        if (!email) throw new Error("an email is needed");
        const groups = (form.get("groups") || "").split(",").map((g) => g.trim()).filter(Boolean);
        accounts.set(email, { groups, verified: form.get("unverified") !== "1" });
        return await provider.interactionFinished(req, res, { login: { accountId: email } }, { mergeWithLastSubmission: false });
      }
      res.writeHead(405).end();
    } catch (err) {
      res.writeHead(400, { "content-type": "text/plain; charset=utf-8" });
      res.end(`sign-in failed: ${err.message}`);
    }
  });
  console.log(issuer);
});

for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => process.exit(0));
