#!/usr/bin/env python3
"""archdb.py DIR [SEED] - writes sync dbs shaped like Arch's into DIR/sync/:

  core.db 280, extra.db 14,450, multilib.db 270 packages (Arch's counts), each a gzip'd
  ustar of `<name>-<ver>/` + `<name>-<ver>/desc`, as repo-add writes them. Each desc has the
  fields pacman's dbs carry (%FILENAME% %NAME% %BASE% %VERSION% %DESC% %CSIZE% %ISIZE%
  %MD5SUM% %SHA256SUM% %PGPSIG% %URL% %LICENSE% %ARCH% %BUILDDATE% %PACKAGER% and dependency
  lists), and a detached signature in %PGPSIG% (566 bytes for an RSA-4096 key, 119 for
  ed25519, about half each), which is most of Arch's extra.db: ~9 MB of gzip around a ~35 MB
  tar. Deterministic for a seed.

  archdb.py --hostile N FILE   one gzip'd db of N minimal entries (a crafted db)

Prints one line per db: name, entries, tar bytes, gzip bytes.
"""
import base64
import gzip
import hashlib
import io
import os
import random
import sys
import tarfile

REPOS = [("core", 280), ("extra", 14450), ("multilib", 270)]
SYLL = ["li", "b", "py", "thon", "per", "l", "x", "org", "gtk", "qt", "kde", "gnome", "font",
        "lib", "rs", "go", "node", "java", "tex", "ruby", "hask", "ell", "ocaml", "vim", "emacs",
        "ga", "me", "net", "sys", "fs", "dev", "doc", "io", "ms", "zst", "ssl", "cr", "ypt",
        "sh", "ell", "au", "dio", "vid", "eo", "im", "age", "ma", "th", "sci", "data"]
WORDS = ("a the library tool for and of with to in support plugin data format fast small "
         "simple free implementation interface bindings client server graphical utility "
         "manager driver extension framework collection command line modern secure").split()


def pkgname(rng, used):
    while True:
        n = "".join(rng.choice(SYLL) for _ in range(rng.randint(2, 5)))
        if rng.random() < 0.35:
            n = rng.choice(["python-", "perl-", "haskell-", "ruby-", "lib32-", "ttf-",
                            "qt6-", "kf6-", "r-", "nodejs-"]) + n
        if n not in used:
            used.add(n)
            return n


def desc(rng, name, names, repo):
    ver = "%d.%d.%d-%d" % (rng.randint(0, 30), rng.randint(0, 40), rng.randint(0, 99),
                           rng.randint(1, 4))
    if rng.random() < 0.1:
        ver = "%d:%s" % (rng.randint(1, 3), ver)
    arch = "any" if rng.random() < 0.3 else "x86_64"
    filename = "%s-%s-%s.pkg.tar.zst" % (name, ver, arch)
    csize = int(rng.lognormvariate(13, 1.8)) + 1000
    isize = csize * rng.randint(2, 5)
    # RSA-4096 (566 bytes) or ed25519 (119 bytes) packager keys
    sig = base64.b64encode(rng.randbytes(566 if rng.random() < 0.55 else 119)).decode()
    deps = lambda k: "\n".join(rng.sample(names, min(len(names), rng.randint(0, k))))
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14)))
    fields = [
        ("FILENAME", filename), ("NAME", name), ("BASE", name), ("VERSION", ver),
        ("DESC", text.capitalize()), ("CSIZE", str(csize)), ("ISIZE", str(isize)),
        ("MD5SUM", rng.randbytes(16).hex()), ("SHA256SUM", rng.randbytes(32).hex()),
        ("PGPSIG", sig), ("URL", "https://%s.example.org/" % name),
        ("LICENSE", rng.choice(["GPL-2.0-or-later", "MIT", "Apache-2.0", "BSD-3-Clause",
                                "LGPL-2.1-or-later\nGPL-3.0-only"])),
        ("ARCH", arch), ("BUILDDATE", str(1700000000 + rng.randint(0, 40000000))),
        ("PACKAGER", "%s %s <%s@archlinux.org>" % (rng.choice(["Alex", "Sam", "Kim", "Jo"]),
                                                   rng.choice(["Doe", "Roe", "Poe"]), name[:6])),
        ("DEPENDS", deps(12)), ("OPTDEPENDS", "\n".join(
            "%s: %s" % (d, rng.choice(WORDS)) for d in rng.sample(names, min(len(names), rng.randint(0, 4))))),
        ("MAKEDEPENDS", deps(6)),
    ]
    out = []
    for k, v in fields:
        if v:
            out.append("%%%s%%\n%s\n" % (k, v))
    return "%s-%s" % (name, ver), ("\n".join(out) + "\n").encode()


def add(tar, name, data=None):
    ti = tarfile.TarInfo(name)
    ti.mtime = 1700000000
    ti.uname = ti.gname = "root"
    if data is None:
        ti.type = tarfile.DIRTYPE
        ti.mode = 0o755
        tar.addfile(ti)
    else:
        ti.mode = 0o644
        ti.size = len(data)
        tar.addfile(ti, io.BytesIO(data))


def write_db(path, members):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            add(tar, name + "/")
            add(tar, name + "/desc", data)
    tar_bytes = raw.getvalue()
    with open(path, "wb") as f:
        with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=6, mtime=0) as gz:
            gz.write(tar_bytes)
    return len(tar_bytes), os.path.getsize(path)


def hostile(n, path):
    """N desc members with two fields each, written block by block: a crafted db."""
    with open(path, "wb") as f:
        with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=1, mtime=0) as gz:
            for i in range(n):
                name = "h%07d-1-1" % i
                data = b"%%FILENAME%%\n%s-x86_64.pkg.tar.zst\n\n%%CSIZE%%\n%d\n" % (
                    name.encode(), i + 1)
                ti = tarfile.TarInfo(name + "/desc")
                ti.size = len(data)
                ti.mtime = 1700000000
                gz.write(ti.tobuf(format=tarfile.USTAR_FORMAT))
                gz.write(data + b"\0" * (512 - len(data)))
            gz.write(b"\0" * 1024)
    print("hostile %d entries, gzip %d" % (n, os.path.getsize(path)))


def main():
    if sys.argv[1] == "--hostile":
        hostile(int(sys.argv[2]), sys.argv[3])
        return
    out = os.path.join(sys.argv[1], "sync")
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 14
    os.makedirs(out, exist_ok=True)
    rng = random.Random(seed)
    used = set()
    for repo, n in REPOS:
        names = [pkgname(rng, used) for _ in range(n)]
        members = [desc(rng, name, names, repo) for name in names]
        t, g = write_db(os.path.join(out, repo + ".db"), members)
        print("%s %d entries, tar %d, gzip %d" % (repo, n, t, g))


if __name__ == "__main__":
    main()
