#!/usr/bin/env python3
"""Flattens two public, MIT-licensed data sets into TSV files that gen_catalog.py reads
(committed under configs/catalog/upstream/ so that the catalog regenerates without network):

  v2fly/domain-list-community  data/*   (MIT, (c) 2018-2019 V2Ray)   -> upstream/v2fly.tsv
  2factorauth/twofactorauth   entries/* (MIT, (c) 2021 2factorauth)  -> upstream/twofactorauth.tsv

Only data is taken (service names, domains, categories, supported 2FA methods); no code.
Each input is a git directory (bare or not) read with `git show`/`git archive`:

  python3 configs/catalog/extract_upstream.py --v2fly /path/v2fly.git --twofa /path/2fa.git

v2fly.tsv rows: file, kind (service|category), rule (`x` = x and below, `=x` = that name),
categories (the category-* files that include a service file, transitively; comma list; on the
file's first row only). Adult-site, STUN/NTP and government lists are left out (SKIP).
`keyword:`/`regexp:` lines and `@ads` lines have no equivalent rule and are left out.
twofactorauth.tsv rows: name, domain, additional domains (space list), categories (comma),
tfa methods (comma; `-` when the service offers no 2FA).
"""

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
# Lists that are not cloud apps and only make the file large (adult sites, STUN/NTP servers,
# government sites).
SKIP = {"category-porn", "category-stun", "category-ntp", "category-ntp-cn", "category-ntp-jp",
        "category-gov-ir", "category-gov-ru"}


def git(repo, *args):
    return subprocess.run(["git", "--git-dir", repo, *args], check=True,
                          capture_output=True).stdout


def archive(repo, path):
    data = git(repo, "archive", "HEAD", path)
    return tarfile.open(fileobj=io.BytesIO(data))


def clean(s):
    return " ".join(str(s).replace("\t", " ").split())


def v2fly(repo, out):
    head = git(repo, "rev-parse", "HEAD").decode().strip()
    tar = archive(repo, "data")
    files = {}
    for m in tar.getmembers():
        if m.isfile() and m.name.startswith("data/"):
            files[m.name[5:]] = tar.extractfile(m).read().decode("utf-8", "replace")
    own, inc = {}, {}
    for name, text in files.items():
        rules, incs = [], []
        for raw in text.splitlines():
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            tok, attrs = parts[0], [p for p in parts[1:] if p.startswith("@")]
            if "@" in tok and not tok.startswith(("regexp:", "keyword:")):
                tok, _, attr = tok.partition("@")
                attrs.append("@" + attr)
            if tok.startswith("include:"):
                # `include:apple@ads` takes only apple's @ads lines: the file as a whole is not
                # in that list, so it does not get the list's category.
                if "@" not in tok and not attrs:
                    incs.append(tok[8:])
                continue
            if "@ads" in attrs or tok.startswith(("keyword:", "regexp:")):
                continue
            if tok.startswith("full:"):
                rules.append("=" + tok[5:].lower())
            elif tok.startswith("domain:"):
                rules.append(tok[7:].lower())
            elif ":" not in tok:
                rules.append(tok.lower())
        own[name], inc[name] = rules, incs

    def closure(name, seen):
        for x in inc.get(name, []):
            if x not in seen:
                seen.add(x)
                closure(x, seen)
        return seen

    cats = {}
    for c in sorted(files):
        if c.startswith("category-"):
            for x in closure(c, set()):
                cats.setdefault(x, set()).add(c)
    rows = 0
    with open(out, "w", encoding="utf-8") as f:
        f.write(f"# v2fly/domain-list-community commit {head} (MIT, (c) 2018-2019 V2Ray)\n")
        f.write("file\tkind\trule\tcategories\n")
        for name in sorted(files):
            kind = "category" if name.startswith("category-") else "service"
            if name in SKIP:
                continue
            cl = ",".join(sorted(cats.get(name, ())))
            for i, r in enumerate(own[name]):
                # The categories are written once per file, on its first row.
                f.write(f"{name}\t{kind}\t{r}\t{cl if i == 0 else ''}\n")
                rows += 1
    print(f"v2fly {head[:12]}: {len(files)} files, {rows} rules", file=sys.stderr)


def twofa(repo, out):
    head = git(repo, "rev-parse", "HEAD").decode().strip()
    tar = archive(repo, "entries")
    rows = []
    for m in tar.getmembers():
        if not (m.isfile() and m.name.endswith(".json")):
            continue
        d = json.loads(tar.extractfile(m).read())
        for name, e in d.items():
            tfa = e.get("tfa") or []
            rows.append((clean(name), clean(e.get("domain", "")).lower(),
                         " ".join(clean(x).lower() for x in e.get("additional-domains") or []),
                         ",".join(clean(x) for x in e.get("categories") or []),
                         ",".join(clean(x) for x in tfa) or "-"))
    rows.sort()
    with open(out, "w", encoding="utf-8") as f:
        f.write(f"# 2factorauth/twofactorauth commit {head} (MIT, (c) 2021 2factorauth and contributors)\n")
        f.write("name\tdomain\tadditional_domains\tcategories\ttfa\n")
        for r in rows:
            f.write("\t".join(r) + "\n")
    print(f"2factorauth {head[:12]}: {len(rows)} entries", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--v2fly", required=True)
    ap.add_argument("--twofa", required=True)
    ap.add_argument("--out", default=os.path.join(HERE, "upstream"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    v2fly(a.v2fly, os.path.join(a.out, "v2fly.tsv"))
    twofa(a.twofa, os.path.join(a.out, "twofactorauth.tsv"))


if __name__ == "__main__":
    main()
