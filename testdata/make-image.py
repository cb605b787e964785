#!/usr/bin/env python3
"""Write an OCI image layout with random-content layers, for tests and benchmarks.

Usage: make-image.py OUT_DIR TAG LAYER_SIZE [LAYER_SIZE ...] [--arch A --arch B] [--seed N]

Each layer is an uncompressed tar holding one file of LAYER_SIZE random bytes
(random, so nothing deduplicates or compresses). With several --arch values the
tag names an image index with one manifest per architecture (each with its own
layers). Prints the digest of what TAG points to. Pushed with
`skopeo copy [--all] oci:OUT_DIR:TAG docker://...`.
"""
import argparse, hashlib, io, json, os, random, tarfile

def put_blob(out, data):
    d = hashlib.sha256(data).hexdigest()
    p = os.path.join(out, "blobs", "sha256", d)
    if not os.path.exists(p):
        with open(p, "wb") as f:
            f.write(data)
    return "sha256:" + d

def random_bytes(size, rng):
    # randbytes counts bits in a C int: layers of 256 MiB and more come in
    # 128 MiB parts (smaller ones keep their bytes for a given seed).
    part = 1 << 27
    if size < 1 << 28:
        return rng.randbytes(size)
    return b"".join(rng.randbytes(min(part, size - i)) for i in range(0, size, part))

def layer(size, rng):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo(name="data-%016x.bin" % rng.getrandbits(64))
        info.size = size
        info.mtime = 0
        t.addfile(info, io.BytesIO(random_bytes(size, rng)))
    return buf.getvalue()

def image(out, sizes, arch, rng):
    layers, diff_ids = [], []
    for s in sizes:
        data = layer(s, rng)
        dg = put_blob(out, data)
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": dg, "size": len(data)})
        diff_ids.append(dg)
    config = json.dumps({"architecture": arch, "os": "linux",
                         "config": {"Cmd": ["/bin/true"]},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    cfg = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put_blob(out, config), "size": len(config)}
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": cfg, "layers": layers}).encode()
    return {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": put_blob(out, manifest),
            "size": len(manifest), "platform": {"architecture": arch, "os": "linux"}}

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out"); ap.add_argument("tag"); ap.add_argument("sizes", nargs="+", type=int)
    ap.add_argument("--arch", action="append"); ap.add_argument("--seed", type=int, default=None)
    a = ap.parse_args()
    rng = random.Random(a.seed if a.seed is not None else os.urandom(16))
    os.makedirs(os.path.join(a.out, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(a.out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    archs = a.arch or ["amd64"]
    descs = [image(a.out, a.sizes, arch, rng) for arch in archs]
    if len(archs) == 1:
        top = descs[0]
        top.pop("platform")
    else:
        index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                            "manifests": descs}).encode()
        top = {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": put_blob(a.out, index), "size": len(index)}
    top["annotations"] = {"org.opencontainers.image.ref.name": a.tag}
    idx_path = os.path.join(a.out, "index.json")
    existing = {"schemaVersion": 2, "manifests": []}
    if os.path.exists(idx_path):
        existing = json.load(open(idx_path))
    existing["manifests"] = [m for m in existing["manifests"]
                             if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != a.tag] + [top]
    with open(idx_path, "w") as f:
        json.dump(existing, f)
    print(top["digest"])

if __name__ == "__main__":
    main()
