#!/usr/bin/env python3
"""An independent cosign-compatible signer for tests: keys, signatures, attestations.

It shares no code with Customs: keys, signatures and envelopes are made with
pyca/cryptography, PyNaCl and securesystemslib, statements with
in-toto-attestation, SBOMs with cyclonedx-python-lib and spdx-tools (pinned in
testdata/requirements.txt), and pushed to a registry with skopeo.

  sign.py keygen --out DIR [--alg ecdsa-p256|ed25519|rsa]
      Writes DIR/cosign.key, cosign's encrypted private key ("ENCRYPTED SIGSTORE
      PRIVATE KEY": PKCS#8 DER sealed with scrypt N=32768 r=8 p=1 and
      nacl/secretbox, password from $COSIGN_PASSWORD, default empty) and
      DIR/cosign.pub (PEM SubjectPublicKeyInfo).

  sign.py sign --registry HOST:PORT --repo REPO --digest sha256:HEX --key KEY [--key KEY ...]
          [--sig-repo REPO2] [--payload-digest sha256:OTHER] [--tamper payload|signature]
      Pushes a cosign signature image at tag sha256-HEX.sig in REPO (or REPO2, as
      cosign's COSIGN_REPOSITORY does): one simple-signing layer per key, its
      signature in the layer annotation dev.cosignproject.cosign/signature.
      --payload-digest signs another image's digest (a valid signature for the
      wrong image); --tamper breaks the payload (after signing) or the signature.

  sign.py attest --registry HOST:PORT --repo REPO --digest sha256:HEX --key KEY
          --predicate slsa1|slsa02|cyclonedx|spdx|vuln [--predicate ...]
          [--builder-id URI] [--source-repo URI] [--source-ref REF] [--build-type URI]
          [--license SPDX] [--critical N] [--statement v1|v0.1]
          [--subject-digest sha256:OTHER] [--sig-repo REPO2] [--tamper payload|signature]
      Pushes a cosign attestation image at tag sha256-HEX.att: one DSSE envelope
      layer (application/vnd.dsse.envelope.v1+json) per predicate, each an in-toto
      statement about HOST:PORT/REPO@sha256:HEX signed by every --key.

sign and attest print the pushed manifest's digest on stdout and nothing else
(keygen prints nothing); errors go to stderr with a non-zero exit. The registry is reached over plain HTTP.
"""
import argparse
import base64
import datetime
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import uuid

import nacl.exceptions
import nacl.secret
import nacl.utils
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from securesystemslib.dsse import Envelope
from securesystemslib.signer import CryptoSigner, SSlibKey

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
DSSE_LAYER = "application/vnd.dsse.envelope.v1+json"
INTOTO_PAYLOAD = "application/vnd.in-toto+json"
SIG_ANNOTATION = "dev.cosignproject.cosign/signature"

PEM_PRIVATE = "ENCRYPTED SIGSTORE PRIVATE KEY"
PEM_PRIVATE_LEGACY = "ENCRYPTED COSIGN PRIVATE KEY"  # older cosign; read, never written
SCRYPT_N, SCRYPT_R, SCRYPT_P = 32768, 8, 1

PREDICATE_TYPES = {
    "slsa1": "https://slsa.dev/provenance/v1",
    "slsa02": "https://slsa.dev/provenance/v0.2",
    "cyclonedx": "https://cyclonedx.org/bom",
    "spdx": "https://spdx.dev/Document",
    "vuln": "https://cosign.sigstore.dev/attestation/vuln/v1",
}
STATEMENT_TYPES = {"v1": "https://in-toto.io/Statement/v1", "v0.1": "https://in-toto.io/Statement/v0.1"}

DEFAULT_BUILDER = ("https://github.com/slsa-framework/slsa-github-generator/"
                   ".github/workflows/generator_container_slsa3.yml@refs/tags/v1.10.0")
DEFAULT_SOURCE = "git+https://github.com/acme/app"
DEFAULT_REF = "refs/heads/main"
DEFAULT_BUILD_TYPE = "https://slsa-framework.github.io/github-actions-buildtypes/workflow/v1"
WORKFLOW_PATH = ".github/workflows/release.yml"


class Fail(Exception):
    """An error reported on stderr with exit status 1."""


def b64(data):
    return base64.b64encode(data).decode()


def compact(obj):
    return json.dumps(obj, separators=(",", ":")).encode()


# ---------------------------------------------------------------- keys

def pem_block(label, der):
    body = base64.encodebytes(der).decode().replace("\n", "")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN %s-----\n%s\n-----END %s-----\n" % (label, "\n".join(lines), label)


def pem_unblock(text, labels):
    m = re.search(r"-----BEGIN ([A-Z0-9 ]+)-----\s*(.*?)\s*-----END \1-----", text, re.S)
    if not m or m.group(1) not in labels:
        raise Fail("not a cosign private key (expected a PEM block %s)" % " or ".join(labels))
    return base64.b64decode("".join(m.group(2).split()))


def scrypt_key(password, salt, n, r, p):
    return Scrypt(salt=salt, length=nacl.secret.SecretBox.KEY_SIZE, n=n, r=r, p=p).derive(password)


def seal(plaintext, password):
    """go-securesystemslib's encrypted.Encrypt, as cosign uses it."""
    salt = os.urandom(32)
    nonce = nacl.utils.random(nacl.secret.SecretBox.NONCE_SIZE)
    box = nacl.secret.SecretBox(scrypt_key(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P))
    sealed = box.encrypt(plaintext, nonce)
    return {
        "kdf": {"name": "scrypt", "params": {"N": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P}, "salt": b64(salt)},
        "cipher": {"name": "nacl/secretbox", "nonce": b64(nonce)},
        "ciphertext": b64(sealed.ciphertext),
    }


def unseal(doc, password):
    kdf, cipher = doc["kdf"], doc["cipher"]
    if kdf.get("name") != "scrypt" or cipher.get("name") != "nacl/secretbox":
        raise Fail("unsupported key encryption %s/%s" % (kdf.get("name"), cipher.get("name")))
    params = kdf["params"]
    key = scrypt_key(password, base64.b64decode(kdf["salt"]), params["N"], params["r"], params["p"])
    try:
        return nacl.secret.SecretBox(key).decrypt(base64.b64decode(doc["ciphertext"]),
                                                  base64.b64decode(cipher["nonce"]))
    except nacl.exceptions.CryptoError:
        raise Fail("cannot decrypt the private key: wrong COSIGN_PASSWORD?") from None


def password():
    return os.environ.get("COSIGN_PASSWORD", "").encode()


def keygen(args):
    if args.alg == "ecdsa-p256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif args.alg == "ed25519":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pkcs8 = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    spki = private.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    os.makedirs(args.out, exist_ok=True)
    key_path = os.path.join(args.out, "cosign.key")
    with open(key_path, "w") as f:
        f.write(pem_block(PEM_PRIVATE, compact(seal(pkcs8, password()))))
    os.chmod(key_path, 0o600)
    with open(os.path.join(args.out, "cosign.pub"), "wb") as f:
        f.write(spki)


def load_signer(path):
    """Reads cosign.key back and wraps it in a securesystemslib signer with cosign's scheme."""
    with open(path) as f:
        doc = json.loads(pem_unblock(f.read(), (PEM_PRIVATE, PEM_PRIVATE_LEGACY)))
    private = serialization.load_der_private_key(unseal(doc, password()), password=None)
    if isinstance(private, ec.EllipticCurvePrivateKey):
        if not isinstance(private.curve, ec.SECP256R1):
            raise Fail("%s: only P-256 ECDSA keys are supported" % path)
        scheme = "ecdsa-sha2-nistp256"        # ECDSA P-256, SHA-256, DER signature
    elif isinstance(private, ed25519.Ed25519PrivateKey):
        scheme = "ed25519"                    # over the raw message
    elif isinstance(private, rsa.RSAPrivateKey):
        scheme = "rsa-pkcs1v15-sha256"        # cosign's RSA scheme (securesystemslib defaults to PSS)
    else:
        raise Fail("%s: unsupported key type %s" % (path, type(private).__name__))
    return CryptoSigner(private, SSlibKey.from_crypto(private.public_key(), scheme=scheme))


def tamper_payload(payload):
    """Still valid JSON with the same meaning, but not the bytes that were signed."""
    assert payload.startswith(b"{")
    return b"{ " + payload[1:]


def tamper_signature(sig):
    return sig[:-1] + bytes([sig[-1] ^ 0x01])


# ---------------------------------------------------------------- signatures

def simple_signing_payload(reference, digest):
    return compact({
        "critical": {
            "identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature",
        },
        "optional": None,
    })


def sign(args):
    reference = "%s/%s" % (args.registry, args.repo)
    payload = simple_signing_payload(reference, args.payload_digest or args.digest)
    layers = []
    for key in args.key:
        sig = bytes.fromhex(load_signer(key).sign(payload).signature)
        body = payload
        if args.tamper == "payload":
            body = tamper_payload(payload)
        elif args.tamper == "signature":
            sig = tamper_signature(sig)
        layers.append((SIMPLESIGNING, body, {SIG_ANNOTATION: b64(sig)}))
    push(args, "sig", layers)


# ---------------------------------------------------------------- attestations

def now():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def rfc3339(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def git_commit(args):
    """A stable, fake 40-hex commit id for the source repository and ref."""
    return hashlib.sha1(("%s@%s" % (args.source_repo, args.source_ref)).encode()).hexdigest()


def https_repo(source_repo):
    # GitHub's workflow build type records the repository without the "git+"
    # scheme prefix (slsa-verifier adds it back to compare with a source URI).
    return source_repo[len("git+"):] if source_repo.startswith("git+") else source_repo


def predicate_slsa1(args, reference):
    """SLSA v1.0 provenance, built from in-toto-attestation's Provenance proto."""
    from google.protobuf import json_format
    from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
    from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor

    start = now()
    prov = provenance_pb2.Provenance()
    bd = prov.build_definition
    bd.build_type = args.build_type
    bd.external_parameters.update({
        "workflow": {"ref": args.source_ref, "repository": https_repo(args.source_repo), "path": WORKFLOW_PATH},
    })
    bd.internal_parameters.update({"github": {"event_name": "push", "repository_id": "123456789",
                                              "repository_owner_id": "987654321"}})
    bd.resolved_dependencies.append(ResourceDescriptor(
        uri="%s@%s" % (args.source_repo, args.source_ref), digest={"gitCommit": git_commit(args)}).pb)
    rd = prov.run_details
    rd.builder.id = args.builder_id
    rd.metadata.invocation_id = "https://github.com/acme/app/actions/runs/1/attempts/1"
    rd.metadata.started_on.FromDatetime(start)
    rd.metadata.finished_on.FromDatetime(start + datetime.timedelta(minutes=3))
    rd.byproducts.append(ResourceDescriptor(name=reference, media_type=OCI_MANIFEST).pb)
    return json_format.MessageToDict(prov)


def predicate_slsa02(args, reference):
    # in-toto-attestation ships no SLSA v0.2 provenance type (only v1), so this
    # predicate is a plain dict following https://slsa.dev/provenance/v0.2.
    start = now()
    commit = git_commit(args)
    config_uri = "%s@%s" % (args.source_repo, args.source_ref)
    return {
        "builder": {"id": args.builder_id},
        "buildType": args.build_type,
        "invocation": {
            "configSource": {"uri": config_uri, "digest": {"sha1": commit}, "entryPoint": WORKFLOW_PATH},
            "parameters": {},
            "environment": {"github_event_name": "push", "github_ref": args.source_ref, "github_sha1": commit},
        },
        "buildConfig": {"steps": [{"command": ["docker", "build", "-t", reference, "."]}]},
        "metadata": {
            "buildInvocationID": "1-1",
            "buildStartedOn": rfc3339(start),
            "buildFinishedOn": rfc3339(start + datetime.timedelta(minutes=3)),
            "completeness": {"parameters": True, "environment": False, "materials": False},
            "reproducible": False,
        },
        "materials": [{"uri": config_uri, "digest": {"sha1": commit}}],
    }


SBOM_PACKAGES = [  # (name, version, purl)
    ("zlib", "1.3.1", "pkg:generic/zlib@1.3.1"),
    ("openssl", "3.0.15", "pkg:generic/openssl@3.0.15"),
    ("acme-app", "1.0.0", "pkg:github/acme/app@1.0.0"),
]


def predicate_cyclonedx(args, reference, digest):
    """A CycloneDX 1.6 JSON document made with cyclonedx-python-lib."""
    from cyclonedx.contrib.license.factories import LicenseFactory
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output.json import JsonV1Dot6
    from packageurl import PackageURL

    licenses = LicenseFactory()
    bom = Bom()
    image = Component(name=reference, version=digest, type=ComponentType.CONTAINER, bom_ref="image")
    bom.metadata.component = image
    packages = [Component(name=name, version=version, type=ComponentType.LIBRARY, bom_ref=purl,
                          purl=PackageURL.from_string(purl), licenses=[licenses.make_from_string(args.license)])
                for name, version, purl in SBOM_PACKAGES]
    for component in packages:
        bom.components.add(component)
    bom.register_dependency(image, packages)
    return json.loads(JsonV1Dot6(bom).output_as_string())


def predicate_spdx(args, reference, digest):
    """An SPDX 2.3 JSON document made (and validated) with spdx-tools."""
    from license_expression import get_spdx_licensing
    from spdx_tools.spdx.jsonschema.document_converter import DocumentConverter
    from spdx_tools.spdx.model import (Actor, ActorType, CreationInfo, Document, ExtractedLicensingInfo,
                                       Package, Relationship, RelationshipType, SpdxNoAssertion)
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    licensing = get_spdx_licensing()
    extracted = []
    if licensing.validate(args.license).errors:
        # Not an SPDX license id or expression: SPDX wants a LicenseRef- with its text.
        ref = "LicenseRef-" + re.sub(r"[^A-Za-z0-9.-]", "-", args.license)
        extracted.append(ExtractedLicensingInfo(license_id=ref, extracted_text=args.license,
                                                license_name=args.license))
        license_text = ref
    else:
        license_text = args.license
    lic = licensing.parse(license_text)
    info = CreationInfo(
        spdx_version="SPDX-2.3", spdx_id="SPDXRef-DOCUMENT", name=reference,
        document_namespace="https://spdx.org/spdxdocs/customs-test/%s" % uuid.uuid4(),
        creators=[Actor(ActorType.TOOL, "customs-testdata-sign.py")], created=now().replace(tzinfo=None))
    image = Package(spdx_id="SPDXRef-image", name=reference, version=digest, download_location=SpdxNoAssertion(),
                    files_analyzed=False, license_concluded=lic, license_declared=lic)
    packages, relationships = [image], [
        Relationship("SPDXRef-DOCUMENT", RelationshipType.DESCRIBES, "SPDXRef-image")]
    for i, (name, version, _purl) in enumerate(SBOM_PACKAGES):
        spdx_id = "SPDXRef-package-%d" % i
        packages.append(Package(spdx_id=spdx_id, name=name, version=version,
                                download_location=SpdxNoAssertion(), files_analyzed=False,
                                license_concluded=lic, license_declared=lic))
        relationships.append(Relationship("SPDXRef-image", RelationshipType.CONTAINS, spdx_id))
    doc = Document(info, packages=packages, relationships=relationships, extracted_licensing_info=extracted)
    problems = validate_full_spdx_document(doc)
    if problems:
        raise Fail("spdx-tools rejects the SPDX document: %s" % "; ".join(p.validation_message for p in problems))
    return DocumentConverter().convert(doc)


def predicate_vuln(args, reference, digest):
    # No library here has a type for cosign's vuln predicate
    # (https://github.com/sigstore/cosign/blob/main/specs/COSIGN_VULN_ATTESTATION_SPEC.md),
    # so it is a plain dict; scanner.result is a Trivy-style JSON report.
    start = now()
    vulns = [{
        "VulnerabilityID": "CVE-2099-%04d" % (1000 + i),
        "PkgName": SBOM_PACKAGES[i % len(SBOM_PACKAGES)][0],
        "InstalledVersion": SBOM_PACKAGES[i % len(SBOM_PACKAGES)][1],
        "Severity": "CRITICAL",
        "Title": "test finding %d" % (i + 1),
    } for i in range(args.critical)]
    return {
        "invocation": {"parameters": None, "uri": "", "event_id": "", "builder.id": ""},
        "scanner": {
            "uri": "pkg:github/aquasecurity/trivy@0.50.0",
            "version": "0.50.0",
            "db": {"uri": "", "version": ""},
            "result": {
                "SchemaVersion": 2,
                "ArtifactName": "%s@%s" % (reference, digest),
                "ArtifactType": "container_image",
                "Results": [{"Target": "%s@%s (debian 12)" % (reference, digest), "Class": "os-pkgs",
                             "Type": "debian", "Vulnerabilities": vulns}],
            },
        },
        "metadata": {"scanStartedOn": rfc3339(start),
                     "scanFinishedOn": rfc3339(start + datetime.timedelta(seconds=20))},
    }


def statement(args, reference, subject_hex, predicate_type, predicate):
    """The in-toto Statement, built and validated with in-toto-attestation's v1 types."""
    from google.protobuf import json_format
    from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
    from in_toto_attestation.v1.statement import Statement

    stmt = Statement([ResourceDescriptor(name=reference, digest={"sha256": subject_hex}).pb], predicate_type,
                     predicate)
    stmt.validate()
    out = json_format.MessageToDict(stmt.pb)
    # The predicate is a protobuf Struct there, which holds every number as a
    # double ("version": 1 would come out as 1.0): take the predicate as built.
    out["predicate"] = predicate
    # in-toto-attestation has no v0.1 Statement type; v0.1 has the same fields
    # (_type, subject[name, digest], predicateType, predicate), only _type differs.
    out["_type"] = STATEMENT_TYPES[args.statement]
    return compact(out)


def attest(args):
    reference = "%s/%s" % (args.registry, args.repo)
    subject = (args.subject_digest or args.digest).split(":", 1)[1]
    signers = [load_signer(k) for k in args.key]
    layers = []
    for name in args.predicate:
        if name == "slsa1":
            predicate = predicate_slsa1(args, reference)
        elif name == "slsa02":
            predicate = predicate_slsa02(args, reference)
        elif name == "cyclonedx":
            predicate = predicate_cyclonedx(args, reference, args.digest)
        elif name == "spdx":
            predicate = predicate_spdx(args, reference, args.digest)
        else:
            predicate = predicate_vuln(args, reference, args.digest)
        ptype = PREDICATE_TYPES[name]
        env = Envelope(statement(args, reference, subject, ptype, predicate), INTOTO_PAYLOAD, {})
        for signer in signers:
            env.sign(signer)  # over DSSE's PAE(payloadType, payload)
        doc = env.to_dict()
        if args.tamper == "payload":
            doc["payload"] = b64(tamper_payload(env.payload))
        elif args.tamper == "signature":
            for s in doc["signatures"]:
                s["sig"] = b64(tamper_signature(base64.b64decode(s["sig"])))
        # cosign annotates attestation layers with "predicateType" and an empty
        # signature (it is inside the envelope); dev.cosignproject.cosign/predicateType
        # is added too for readers that look for it there.
        annotations = {SIG_ANNOTATION: "", "predicateType": ptype,
                       "dev.cosignproject.cosign/predicateType": ptype}
        layers.append((DSSE_LAYER, compact(doc), annotations))
    push(args, "att", layers)


# ---------------------------------------------------------------- push

def put_blob(layout, data):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs", "sha256", digest), "wb") as f:
        f.write(data)
    return "sha256:" + digest


def push(args, suffix, layers):
    """Writes the signature image as an OCI layout and copies it to the registry with skopeo."""
    algo, hexdigest = args.digest.split(":", 1)
    tag = "%s-%s.%s" % (algo, hexdigest, suffix)
    repo = args.sig_repo or args.repo
    with tempfile.TemporaryDirectory(prefix="customs-sign-") as layout:
        os.makedirs(os.path.join(layout, "blobs", "sha256"))
        with open(os.path.join(layout, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)
        descriptors = []
        for media_type, data, annotations in layers:
            descriptors.append({"mediaType": media_type, "size": len(data), "digest": put_blob(layout, data),
                                "annotations": annotations})
        # The config cosign writes for its signature images.
        config = compact({
            "architecture": "", "created": "0001-01-01T00:00:00Z",
            "history": [{"created": "0001-01-01T00:00:00Z"}], "os": "",
            "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in descriptors]},
            "config": {},
        })
        manifest = compact({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "size": len(config), "digest": put_blob(layout, config)},
            "layers": descriptors,
        })
        digest = put_blob(layout, manifest)
        with open(os.path.join(layout, "index.json"), "w") as f:
            json.dump({"schemaVersion": 2, "manifests": [{
                "mediaType": OCI_MANIFEST, "digest": digest, "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": tag}}]}, f)
        cmd = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--preserve-digests",
               "oci:%s:%s" % (layout, tag), "docker://%s/%s:%s" % (args.registry, repo, tag)]
        try:
            done = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr)
        except FileNotFoundError:
            raise Fail("skopeo is not installed (scripts/install-deps installs it)") from None
        if done.returncode != 0:
            raise Fail("skopeo copy failed with status %d" % done.returncode)
    print(digest)


# ---------------------------------------------------------------- CLI

def digest_arg(value):
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", value):
        raise argparse.ArgumentTypeError("expected sha256:<64 lowercase hex>, got %r" % value)
    return value


def parser():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)

    k = sub.add_parser("keygen", help="write DIR/cosign.key (encrypted) and DIR/cosign.pub")
    k.add_argument("--out", required=True, metavar="DIR")
    k.add_argument("--alg", choices=["ecdsa-p256", "ed25519", "rsa"], default="ecdsa-p256")

    def common(p, what):
        p.add_argument("--registry", required=True, metavar="HOST:PORT")
        p.add_argument("--repo", required=True, metavar="REPO")
        p.add_argument("--digest", required=True, type=digest_arg, metavar="sha256:HEX",
                       help="the image that is %s" % what)
        p.add_argument("--key", required=True, action="append", metavar="DIR/cosign.key",
                       help="repeat for several keys")
        p.add_argument("--sig-repo", metavar="REPO2", help="push there instead (cosign's COSIGN_REPOSITORY)")
        p.add_argument("--tamper", choices=["payload", "signature"])

    s = sub.add_parser("sign", help="push a cosign signature (tag sha256-HEX.sig), one layer per --key")
    common(s, "signed")
    s.add_argument("--payload-digest", type=digest_arg, metavar="sha256:OTHER",
                   help="sign this digest instead (a valid signature for another image)")

    a = sub.add_parser("attest", help="push a cosign attestation (tag sha256-HEX.att), one layer per --predicate")
    common(a, "attested")
    a.add_argument("--predicate", required=True, action="append", choices=list(PREDICATE_TYPES))
    a.add_argument("--builder-id", default=DEFAULT_BUILDER, metavar="URI")
    a.add_argument("--source-repo", default=DEFAULT_SOURCE, metavar="URI")
    a.add_argument("--source-ref", default=DEFAULT_REF, metavar="REF")
    a.add_argument("--build-type", default=DEFAULT_BUILD_TYPE, metavar="URI")
    a.add_argument("--license", default="Apache-2.0", metavar="SPDX", help="every SBOM package's license")
    a.add_argument("--critical", type=int, default=0, metavar="N", help="CRITICAL findings in the vuln scan")
    a.add_argument("--statement", choices=list(STATEMENT_TYPES), default="v1")
    a.add_argument("--subject-digest", type=digest_arg, metavar="sha256:OTHER",
                   help="name this digest as the statement's subject instead")
    return ap


def main():
    args = parser().parse_args()
    try:
        {"keygen": keygen, "sign": sign, "attest": attest}[args.command](args)
    except (Fail, OSError, ValueError, KeyError) as e:
        print("sign.py: %s" % e, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
