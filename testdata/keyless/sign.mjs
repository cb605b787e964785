#!/usr/bin/env node
// Offline keyless Sigstore test signer for Customs.
//
//   node testdata/keyless/sign.mjs --spec SPEC.json --out DIR
//
// Runs sigstore-js's signing code (@sigstore/sign: FulcioSigner, RekorWitness,
// TSAWitness, DSSEBundleBuilder, MessageSignatureBundleBuilder) against the
// in-process fakes of @sigstore/mock (Fulcio CA + CT log, Rekor v1, RFC 3161
// TSA). The clients speak HTTP to https://*.customs.test URLs; nock answers
// those requests in-process and every other outgoing connection is refused
// while signing, so nothing leaves the machine. Keys are fresh on every run
// (or derived from "seed"), so one invocation writes the trusted root AND all
// bundles that chain to it:
//
//   DIR/trusted_root.json   TrustedRoot (application/vnd.dev.sigstore.trustedroot+json;version=0.1):
//                           the main mock Fulcio root, the mock Rekor key
//                           (logId = sha256 of its DER SPKI), the mock CT log
//                           key (the mock Fulcio embeds SCTs) and the mock TSA
//                           chain; every validFor.start is 7 days in the past.
//   DIR/<name>.sigstore.json Sigstore bundle v0.3 JSON
//                           (application/vnd.dev.sigstore.bundle.v0.3+json),
//                           signing certificate in verificationMaterial.certificate,
//                           one Rekor v1 entry with inclusion promise (SET) and
//                           inclusion proof + checkpoint.
//
// On success a JSON summary is printed to stdout; on failure a message starting
// with "sign.mjs:" goes to stderr and the exit code is 1 (2 for usage errors;
// SIGN_DEBUG=1 adds the stack). Bundles signed before a failed attach stay in DIR.
//
// SPEC.json:
// {
//   "seed": "optional string: derive all service keys (CA, CT log, Rekor, TSA,
//            untrusted CA) from it; certificates, signatures and times still differ per run",
//   "bundles": [{
//     "name": "ok",                              // file name stem, [A-Za-z0-9._-]+
//     "identity": "https://github.com/acme/app/.github/workflows/release.yml@refs/heads/main",
//                                                 // certificate SAN (always a URI SAN in the mock)
//     "issuer": "https://token.actions.githubusercontent.com",
//                                                 // OIDC issuer extensions 1.3.6.1.4.1.57264.1.1 and .1.8
//     "claims": {},                              // optional extra token claims; the mock Fulcio maps the
//                                                 // GitHub ones (workflow_ref, sha, repository, ...) to extensions
//     "kind": "dsse" | "message",
//     // kind "dsse": DSSE envelope, payloadType application/vnd.in-toto+json, payload
//     // = in-toto Statement v1; Rekor entry kind intoto 0.0.2 (or dsse 0.0.1, see rekorEntryType).
//     "subjectDigest": "sha256:HEX",
//     "subjectName": "optional; default <registry>/<repo> when attach is set, else \"artifact\"",
//     "predicateType": "https://slsa.dev/provenance/v1",   // or https://sigstore.dev/cosign/sign/v1
//     "predicate": {},                           // default {}
//     // kind "message": message signature over the file's bytes; Rekor hashedrekord 0.0.1.
//     "artifactFile": "path",                    // relative paths are resolved against SPEC.json's directory
//     "untrustedCA": false,  // true: certificate from a second mock CA (same subject name, other key,
//                            // own CT log) that is NOT in trusted_root.json
//     "expired": false,      // true: the main CA issues the certificate with its clock 2 hours back,
//                            // so it expired (notAfter = notBefore + 10 min) ~110 min before Rekor's
//                            // integratedTime (and the TSA time)
//     "tsa": false,          // true: also get an RFC 3161 timestamp from the mock TSA
//     "rekorEntryType": "intoto", // kind dsse only: "intoto" (0.0.2, default) or "dsse" (0.0.1)
//     "attach": {"registry": "127.0.0.1:5000", "repo": "team/app", "digest": "sha256:HEX"}
//                            // optional: after signing, push the bundle with @sigstore/oci as an OCI
//                            // artifact whose subject is that image (referrers API, else the
//                            // sha256-<hex> referrers tag schema). Plain HTTP only for
//                            // localhost / 127.0.0.1 registries, no credentials.
//   }]
// }

import crypto from 'node:crypto';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { parseArgs } from 'node:util';

// All dependencies are CommonJS; load them through require so that this file
// and @sigstore/mock share one copy of each (@peculiar/webcrypto also ships an
// ES build, which would be a second copy).
const require = createRequire(import.meta.url);
require('reflect-metadata'); // needed by @peculiar/x509
const { Crypto } = require('@peculiar/webcrypto');
const x509 = require('@peculiar/x509');
const bundleLib = require('@sigstore/bundle');
const mock = require('@sigstore/mock');
const oci = require('@sigstore/oci');
const sign = require('@sigstore/sign');
const nock = require('nock');

const FULCIO_URL = 'https://fulcio.customs.test';
const REKOR_URL = 'https://rekor.customs.test';
const TSA_URL = 'https://tsa.customs.test';
const CTFE_URL = 'https://ctfe.customs.test';

const TRUSTED_ROOT_MEDIA_TYPE = 'application/vnd.dev.sigstore.trustedroot+json;version=0.1';
const BUNDLE_MEDIA_TYPE = bundleLib.BUNDLE_V03_MEDIA_TYPE; // application/vnd.dev.sigstore.bundle.v0.3+json
const INTOTO_PAYLOAD_TYPE = 'application/vnd.in-toto+json';
const INTOTO_STATEMENT_TYPE = 'https://in-toto.io/Statement/v1';

const CA_SUBJECT = 'CN=sigstore,O=sigstore.mock'; // hard-coded issuer name of the mock CA
const DAY_MS = 24 * 60 * 60 * 1000;
const EXPIRED_BACKDATE_MS = 2 * 60 * 60 * 1000;
// P-256 group order, to keep seeded private keys in range.
const P256_N = BigInt('0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551');

class UsageError extends Error {}

function fail(message) {
  throw new UsageError(message);
}

function parseCommandLine() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        spec: { type: 'string' },
        out: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (err) {
    fail(`${err.message}\nusage: node sign.mjs --spec SPEC.json --out DIR`);
  }
  if (values.help) {
    process.stdout.write('usage: node sign.mjs --spec SPEC.json --out DIR (see the comment at the top of sign.mjs)\n');
    process.exit(0);
  }
  if (!values.spec || !values.out) fail('usage: node sign.mjs --spec SPEC.json --out DIR');
  return { specPath: path.resolve(values.spec), outDir: path.resolve(values.out) };
}

// ---------------------------------------------------------------- spec

function loadSpec(specPath) {
  let spec;
  try {
    spec = JSON.parse(fs.readFileSync(specPath, 'utf8'));
  } catch (err) {
    fail(`cannot read spec ${specPath}: ${err.message}`);
  }
  if (typeof spec !== 'object' || spec === null || Array.isArray(spec)) fail('spec: must be a JSON object');
  if (spec.seed !== undefined && typeof spec.seed !== 'string') fail('spec: "seed" must be a string');
  if (!Array.isArray(spec.bundles) || spec.bundles.length === 0) fail('spec: "bundles" must be a non-empty array');
  const names = new Set();
  const bundles = spec.bundles.map((b, i) => {
    const where = `spec.bundles[${i}]`;
    if (typeof b !== 'object' || b === null) fail(`${where}: must be an object`);
    const str = (key, required = true) => {
      const v = b[key];
      if (v === undefined && !required) return undefined;
      if (typeof v !== 'string' || v.length === 0) fail(`${where}: "${key}" must be a non-empty string`);
      return v;
    };
    const bool = (key) => {
      if (b[key] === undefined) return false;
      if (typeof b[key] !== 'boolean') fail(`${where}: "${key}" must be true or false`);
      return b[key];
    };
    const name = str('name');
    if (!/^[A-Za-z0-9._-]+$/.test(name) || name.startsWith('.')) fail(`${where}: "name" must match [A-Za-z0-9._-]+`);
    if (name === 'trusted_root') fail(`${where}: "name" must not be "trusted_root"`);
    if (names.has(name)) fail(`${where}: duplicate name "${name}"`);
    names.add(name);
    const kind = str('kind');
    const out = {
      name,
      kind,
      identity: str('identity'),
      issuer: str('issuer'),
      claims: b.claims ?? {},
      untrustedCA: bool('untrustedCA'),
      expired: bool('expired'),
      tsa: bool('tsa'),
      rekorEntryType: b.rekorEntryType ?? 'intoto',
    };
    if (!['intoto', 'dsse'].includes(out.rekorEntryType)) fail(`${where}: "rekorEntryType" must be "intoto" or "dsse"`);
    if (typeof out.claims !== 'object' || out.claims === null || Array.isArray(out.claims)) {
      fail(`${where}: "claims" must be an object`);
    }
    if (out.untrustedCA && out.expired) fail(`${where}: "untrustedCA" and "expired" cannot both be true`);
    if (b.attach !== undefined) {
      const a = b.attach;
      if (typeof a !== 'object' || a === null) fail(`${where}: "attach" must be an object`);
      for (const k of ['registry', 'repo', 'digest']) {
        if (typeof a[k] !== 'string' || a[k].length === 0) fail(`${where}: "attach.${k}" must be a non-empty string`);
      }
      if (!/^sha256:[0-9a-f]{64}$/.test(a.digest)) fail(`${where}: "attach.digest" must be sha256:<64 lowercase hex>`);
      out.attach = { registry: a.registry, repo: a.repo, digest: a.digest };
    }
    if (kind === 'dsse') {
      const digest = str('subjectDigest');
      const m = /^sha256:([0-9a-f]{64})$/.exec(digest);
      if (!m) fail(`${where}: "subjectDigest" must be sha256:<64 lowercase hex>`);
      out.subjectDigestHex = m[1];
      out.subjectName = str('subjectName', false) ??
        (out.attach ? `${out.attach.registry}/${out.attach.repo}` : 'artifact');
      out.predicateType = str('predicateType');
      out.predicate = b.predicate ?? {};
      if (typeof out.predicate !== 'object' || out.predicate === null || Array.isArray(out.predicate)) {
        fail(`${where}: "predicate" must be an object`);
      }
    } else if (kind === 'message') {
      const file = path.resolve(path.dirname(specPath), str('artifactFile'));
      try {
        out.artifact = fs.readFileSync(file);
      } catch (err) {
        fail(`${where}: cannot read artifactFile ${file}: ${err.message}`);
      }
    } else {
      fail(`${where}: "kind" must be "dsse" or "message"`);
    }
    return out;
  });
  return { seed: spec.seed, bundles };
}

// ---------------------------------------------------------------- keys

// A P-256 key pair (node KeyObjects): random, or derived from the seed and a label.
function keyPair(seed, label) {
  if (seed === undefined) return crypto.generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  for (let counter = 0; ; counter++) {
    const d = Buffer.from(crypto.hkdfSync('sha256', Buffer.from(seed, 'utf8'),
      Buffer.from('customs-keyless-testdata'), Buffer.from(`${label}/${counter}`), 32));
    const n = BigInt(`0x${d.toString('hex')}`);
    if (n === 0n || n >= P256_N) continue;
    const ecdh = crypto.createECDH('prime256v1');
    ecdh.setPrivateKey(d);
    const pub = ecdh.getPublicKey(); // 0x04 || X || Y
    const jwk = {
      kty: 'EC', crv: 'P-256',
      d: d.toString('base64url'),
      x: pub.subarray(1, 33).toString('base64url'),
      y: pub.subarray(33, 65).toString('base64url'),
    };
    const privateKey = crypto.createPrivateKey({ key: jwk, format: 'jwk' });
    return { privateKey, publicKey: crypto.createPublicKey(privateKey) };
  }
}

// A self-signed CA root like the mock's own (same name, extensions and
// ECDSA-SHA384 signature), but valid from `notBefore` instead of "now", so
// certificates issued with a back-dated clock still fall inside it.
async function rootCertificate(pair, notBefore) {
  const wc = new Crypto();
  const keys = {
    privateKey: await wc.subtle.importKey('jwk', pair.privateKey.export({ format: 'jwk' }),
      { name: 'ECDSA', namedCurve: 'P-256' }, true, ['sign']),
    publicKey: await wc.subtle.importKey('jwk', pair.publicKey.export({ format: 'jwk' }),
      { name: 'ECDSA', namedCurve: 'P-256' }, true, ['verify']),
  };
  return x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: '01',
    name: CA_SUBJECT,
    notBefore,
    notAfter: new Date(notBefore.getTime() + 400 * DAY_MS),
    signingAlgorithm: { name: 'ECDSA', hash: 'SHA-384' },
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.keyCertSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey, false, wc),
      await x509.AuthorityKeyIdentifierExtension.create(keys.publicKey, false, wc),
    ],
  }, wc);
}

// ---------------------------------------------------------------- services

async function startServices(seed) {
  const now = Date.now();
  const trustStart = new Date(Math.floor((now - 7 * DAY_MS) / 1000) * 1000);
  const keys = {
    ca: keyPair(seed, 'fulcio-ca'),
    ct: keyPair(seed, 'ct-log'),
    rekor: keyPair(seed, 'rekor'),
    tsa: keyPair(seed, 'tsa'),
    untrustedCA: keyPair(seed, 'untrusted-fulcio-ca'),
    untrustedCT: keyPair(seed, 'untrusted-ct-log'),
  };

  // Main CA: real clock. initializeCA builds its own root valid from "now";
  // swap in one valid from trustStart (same key, name and extensions).
  const ctlog = await mock.initializeCTLog(keys.ct);
  const ca = await mock.initializeCA(keys.ca, ctlog);
  ca.root = await rootCertificate(keys.ca, trustStart);

  // Same CA key and root with the mock's fixed `clock` set 2 hours back: its
  // certificates (10-minute lifetime) are expired when Rekor logs the entry.
  const past = new Date(now - EXPIRED_BACKDATE_MS);
  const expiredCA = await mock.initializeCA(keys.ca, await mock.initializeCTLog(keys.ct, past), past);
  expiredCA.root = ca.root;

  // A different CA (other key, own CT log) that trusted_root.json does not list.
  const untrustedCA = await mock.initializeCA(keys.untrustedCA, await mock.initializeCTLog(keys.untrustedCT));
  untrustedCA.root = await rootCertificate(keys.untrustedCA, trustStart);

  const tlog = await mock.initializeTLog(REKOR_URL, keys.rekor);
  const tsa = await mock.initializeTSA(keys.tsa);
  // The mock TSA stamps genTime with milliseconds (e.g. "...37.76Z"). Real
  // Sigstore TSAs use whole seconds, and DER GeneralizedTime decoders such as
  // the Rust der crate's (used by sigstore-tsa) and @sigstore/core's reject or
  // mis-parse fractions, so give it a whole-second clock.
  tsa.getCurrentTime = () => new Date(Math.floor(Date.now() / 1000) * 1000);

  const fulcio = {
    main: mock.fulcioHandler(ca),
    expired: mock.fulcioHandler(expiredCA),
    untrusted: mock.fulcioHandler(untrustedCA),
  };
  let currentFulcio = fulcio.main;

  // nock routes the @sigstore/sign HTTP clients to the in-process handlers.
  const route = (base, urlPath, handlerFn) => {
    nock(base).persist().post(urlPath).reply(async (_uri, body) => {
      const req = typeof body === 'string' ? body : JSON.stringify(body);
      const { statusCode, response, contentType } = await handlerFn()(req);
      return [statusCode, response, { 'Content-Type': contentType || 'text/plain' }];
    });
  };
  nock.disableNetConnect();
  route(FULCIO_URL, fulcio.main.path, () => async (req) => rewrapPEM(await currentFulcio.fn(req)));
  const rekor = mock.rekorHandler(tlog);
  route(REKOR_URL, rekor.path, () => (req) => rekor.fn(JSON.stringify(storedRekorEntry(JSON.parse(req)))));
  const timestamp = mock.tsaHandler(tsa);
  route(TSA_URL, timestamp.path, () => timestamp.fn);

  const trustedRoot = buildTrustedRoot({ ca, ctlog, tlog, tsa, trustStart });
  return {
    trustedRoot,
    useFulcio: (which) => { currentFulcio = fulcio[which]; },
    stop: () => {
      nock.cleanAll();
      nock.enableNetConnect();
      nock.restore();
    },
  };
}

// The mock Fulcio returns each PEM certificate as one long base64 line; real
// Fulcio (and OpenSSL, Go, Python's cryptography) wrap at 64 columns. The PEM
// text ends up inside the Rekor hashedrekord/intoto body, and verifiers that
// compare that body textually (sigstore-python) reject the unwrapped form.
function rewrapPEM(result) {
  if (result.statusCode !== 201) return result;
  const json = JSON.parse(result.response);
  const chain = json.signedCertificateEmbeddedSct?.chain;
  if (chain) {
    chain.certificates = chain.certificates.map((pem) => {
      const b64 = pem.replace(/-----(BEGIN|END) CERTIFICATE-----/g, '').replace(/\s+/g, '');
      return `-----BEGIN CERTIFICATE-----\n${b64.match(/.{1,64}/g).join('\n')}\n-----END CERTIFICATE-----\n`;
    });
  }
  return { ...result, response: JSON.stringify(json) };
}

// The mock Rekor logs the proposed entry as it was sent. Real Rekor stores a
// canonical form instead, and verifiers parse that form: intoto 0.0.2 drops the
// envelope payload; dsse 0.0.1 replaces proposedContent by envelopeHash,
// payloadHash and signatures[{signature, verifier}]. hashedrekord 0.0.1 is
// stored as proposed.
function storedRekorEntry(proposed) {
  const sha256hex = (data) => crypto.createHash('sha256').update(data).digest('hex');
  if (proposed.kind === 'intoto' && proposed.apiVersion === '0.0.2') {
    const c = proposed.spec.content;
    return {
      apiVersion: proposed.apiVersion,
      kind: proposed.kind,
      spec: { content: {
        envelope: { payloadType: c.envelope.payloadType, signatures: c.envelope.signatures },
        hash: c.hash,
        payloadHash: c.payloadHash,
      } },
    };
  }
  if (proposed.kind === 'dsse' && proposed.apiVersion === '0.0.1') {
    const { envelope, verifiers } = proposed.spec.proposedContent;
    const env = JSON.parse(envelope);
    return {
      apiVersion: proposed.apiVersion,
      kind: proposed.kind,
      spec: {
        envelopeHash: { algorithm: 'sha256', value: sha256hex(envelope) },
        payloadHash: { algorithm: 'sha256', value: sha256hex(Buffer.from(env.payload, 'base64')) },
        signatures: env.signatures.map((sig) => ({ signature: sig.sig, verifier: verifiers[0] })),
      },
    };
  }
  return proposed;
}

function buildTrustedRoot({ ca, ctlog, tlog, tsa, trustStart }) {
  const b64 = (buf) => Buffer.from(buf).toString('base64');
  const sha256 = (buf) => crypto.createHash('sha256').update(buf).digest();
  const validFor = { start: trustStart.toISOString().replace('.000Z', 'Z') };
  const logKey = (der) => ({ rawBytes: b64(der), keyDetails: 'PKIX_ECDSA_P256_SHA_256', validFor });
  return {
    mediaType: TRUSTED_ROOT_MEDIA_TYPE,
    tlogs: [{
      baseUrl: REKOR_URL,
      hashAlgorithm: 'SHA2_256',
      publicKey: logKey(tlog.publicKey),
      logId: { keyId: b64(sha256(tlog.publicKey)) },
    }],
    certificateAuthorities: [{
      subject: { organization: 'sigstore.mock', commonName: 'sigstore' },
      uri: FULCIO_URL,
      certChain: { certificates: [{ rawBytes: b64(ca.rootCertificate) }] },
      validFor,
    }],
    ctlogs: [{
      baseUrl: CTFE_URL,
      hashAlgorithm: 'SHA2_256',
      publicKey: logKey(ctlog.publicKey),
      logId: { keyId: b64(ctlog.logID) }, // sha256 of the CT log's DER SPKI
    }],
    timestampAuthorities: [{
      subject: { organization: 'sigstore.mock', commonName: 'tsa' },
      uri: TSA_URL,
      // leaf (signing) certificate first, root last
      certChain: { certificates: [{ rawBytes: b64(tsa.intCertificate) }, { rawBytes: b64(tsa.rootCertificate) }] },
      validFor,
    }],
  };
}

// ---------------------------------------------------------------- signing

// The mock Fulcio decodes the OIDC token without checking its signature.
function identityToken(b) {
  const enc = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const iat = Math.floor(Date.now() / 1000);
  const claims = { ...b.claims, iss: b.issuer, sub: b.identity, aud: 'sigstore', iat, exp: iat + 600 };
  return `${enc({ alg: 'none', typ: 'JWT' })}.${enc(claims)}.`;
}

async function signOne(b) {
  const signer = new sign.FulcioSigner({
    fulcioBaseURL: FULCIO_URL,
    identityProvider: { getToken: async () => identityToken(b) },
  });
  const witnesses = [new sign.RekorWitness({ rekorBaseURL: REKOR_URL, entryType: b.rekorEntryType })];
  if (b.tsa) witnesses.push(new sign.TSAWitness({ tsaBaseURL: TSA_URL }));

  if (b.kind === 'dsse') {
    const statement = {
      _type: INTOTO_STATEMENT_TYPE,
      subject: [{ name: b.subjectName, digest: { sha256: b.subjectDigestHex } }],
      predicateType: b.predicateType,
      predicate: b.predicate,
    };
    const builder = new sign.DSSEBundleBuilder({ signer, witnesses, certificateChain: false });
    return builder.create({ data: Buffer.from(JSON.stringify(statement)), type: INTOTO_PAYLOAD_TYPE });
  }
  const builder = new sign.MessageSignatureBundleBuilder({ signer, witnesses });
  const bundle = await builder.create({ data: b.artifact });
  // MessageSignatureBundleBuilder always emits a v0.2 bundle with a one-element
  // x509CertificateChain; v0.3 carries the leaf as verificationMaterial.certificate.
  // Nothing signed or logged covers this wrapper.
  const vm = bundle.verificationMaterial;
  if (vm.content.$case === 'x509CertificateChain') {
    vm.content = { $case: 'certificate', certificate: vm.content.x509CertificateChain.certificates[0] };
  }
  bundle.mediaType = BUNDLE_MEDIA_TYPE;
  return bundle;
}

// bundleToJSON follows proto3 JSON and drops default values. The mock Rekor's
// inclusion proof is for a one-leaf tree (logIndex 0, no hashes), so both
// fields would vanish; they are REQUIRED in the bundle spec and some verifiers
// (sigstore-python) reject the bundle without them. Write them explicitly.
function toJSON(bundle) {
  const json = bundleLib.bundleToJSON(bundle);
  for (const entry of json.verificationMaterial.tlogEntries ?? []) {
    const proof = entry.inclusionProof;
    if (proof) {
      entry.inclusionProof = { logIndex: proof.logIndex ?? '0', rootHash: proof.rootHash,
        treeSize: proof.treeSize, hashes: proof.hashes ?? [], checkpoint: proof.checkpoint };
    }
  }
  return json;
}

async function attach(b, bundleBytes) {
  const annotations = {
    'dev.sigstore.bundle.content': b.kind === 'dsse' ? 'dsse-envelope' : 'message-signature',
  };
  if (b.kind === 'dsse') annotations['dev.sigstore.bundle.predicateType'] = b.predicateType;
  return oci.attachArtifactToImage({
    imageName: `${b.attach.registry}/${b.attach.repo}`,
    imageDigest: b.attach.digest,
    artifact: bundleBytes,
    mediaType: BUNDLE_MEDIA_TYPE,
    annotations,
    credentials: undefined, // anonymous: the library only signs in when credentials are given
    fetchOpts: { retry: { retries: 2, minTimeout: 200 } },
  });
}

// ---------------------------------------------------------------- main

function describe(err) {
  const parts = [];
  for (let e = err, depth = 0; e && depth < 6; e = e.cause, depth++) {
    const code = e.code ? ` [${e.code}]` : '';
    parts.push(`${e.message ?? String(e)}${code}`);
  }
  return parts.join(': ');
}

async function main() {
  const major = Number(process.versions.node.split('.')[0]);
  if (major < 20) fail(`Node.js >= 20.17 is required (this is ${process.version})`);
  const { specPath, outDir } = parseCommandLine();
  const spec = loadSpec(specPath);
  fs.mkdirSync(outDir, { recursive: true });

  const services = await startServices(spec.seed);
  const signed = [];
  try {
    for (const b of spec.bundles) {
      services.useFulcio(b.untrustedCA ? 'untrusted' : b.expired ? 'expired' : 'main');
      let bundle;
      try {
        bundle = await signOne(b);
      } catch (err) {
        throw new Error(`signing bundle "${b.name}" failed`, { cause: err });
      }
      const bytes = Buffer.from(JSON.stringify(toJSON(bundle)));
      const file = path.join(outDir, `${b.name}.sigstore.json`);
      fs.writeFileSync(file, bytes);
      signed.push({ b, bytes, file });
    }
  } finally {
    services.stop(); // no HTTP interception from here on
  }
  const rootFile = path.join(outDir, 'trusted_root.json');
  fs.writeFileSync(rootFile, `${JSON.stringify(services.trustedRoot, null, 2)}\n`);

  const summary = { trustedRoot: rootFile, bundles: [] };
  for (const { b, bytes, file } of signed) {
    const entry = {
      name: b.name, file, kind: b.kind, untrustedCA: b.untrustedCA, expired: b.expired, tsa: b.tsa,
      bundleDigest: `sha256:${crypto.createHash('sha256').update(bytes).digest('hex')}`,
    };
    if (b.attach) {
      let desc;
      try {
        desc = await attach(b, bytes);
      } catch (err) {
        throw new Error(`attaching bundle "${b.name}" to ${b.attach.registry}/${b.attach.repo}@${b.attach.digest} failed`, { cause: err });
      }
      entry.attached = {
        registry: b.attach.registry, repo: b.attach.repo, subject: b.attach.digest,
        manifestDigest: desc.digest, manifestMediaType: desc.mediaType, size: desc.size,
      };
    }
    summary.bundles.push(entry);
  }
  process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`sign.mjs: ${describe(err)}\n`);
    if (process.env.SIGN_DEBUG && err?.stack) process.stderr.write(`${err.stack}\n`);
    process.exit(err instanceof UsageError ? 2 : 1);
  },
);
