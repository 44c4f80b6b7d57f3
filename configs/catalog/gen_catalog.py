#!/usr/bin/env python3
"""Generates configs/catalog/catalog.json, Tollgate's shipped cloud app catalog.

Inputs (see SOURCES.md):
  manual_apps.txt            hand-written public facts (this folder): vendors, attribute bundles,
                             apps, and how nDPI / gdpr-tracker entries map onto app ids.
  <corpus>/catalog/ndpi_hosts.tsv          nDPI host_match[] (LGPL-3.0-or-later), domain rules.
  <corpus>/catalog/gdpr-tracker/data/*.json privacyradius/gdpr-tracker (MIT): HQ country,
                             certifications, hosting, data centres, breaches, GDPR status.

The corpus is found through --corpus, else $TOLLGATE_CORPUS, else ../../../shared/corpus next to
this script. Output: one JSON document {"version", "generated_by", "apps": [...]}, one app per
line, sorted by id. Every app records the source of each fact in "sources" ("manual", "ndpi",
"gdpr-tracker"; "domains" may combine them with "+").

Priorities when two sources disagree: manual beats nDPI beats gdpr-tracker for domains (a rule
already claimed by an app is not given to another one), manual beats gdpr-tracker for attributes.

Run:  python3 configs/catalog/gen_catalog.py            (rewrites catalog.json, prints counts)
      python3 configs/catalog/gen_catalog.py --check    (exit 1 if catalog.json is stale)
"""

import argparse
import glob
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

CATEGORIES = [
    "Accounting and finance", "Advertising", "AI model provider", "Business intelligence",
    "Business management", "Cloud computing platform", "Cloud storage", "Code hosting",
    "Collaboration", "Communications", "Content management", "Content sharing", "CRM",
    "Customer support", "Data analytics", "Development tools", "E-commerce", "Education",
    "Forums", "Gaming", "Generative AI", "Health", "Hosting services", "HR",
    "Internet of Things", "IT services", "Marketing", "Media", "News and entertainment",
    "Online meetings", "Operations management", "Personal instant messaging", "Productivity",
    "Project management", "Property management", "Sales", "Security", "Social network",
    "Supply chain and logistics", "Transportation and travel", "Vendor management systems",
    "Web analytics", "Webmail", "Website monitoring",
]
CANON = {c.lower(): c for c in CATEGORIES}

# nDPI category -> catalog category, for nDPI apps the manual file does not place itself.
NDPI_CATEGORY = {
    "Cloud": "Cloud storage", "Collaborative": "Collaboration",
    "Chat": "Personal instant messaging", "SocialNetwork": "Social network",
    "Streaming": "News and entertainment", "Video": "News and entertainment",
    "Music": "News and entertainment", "Media": "Media", "Game": "Gaming",
    "VoIP": "Online meetings", "VPN": "Security", "Email": "Webmail",
    "Shopping": "E-commerce", "RemoteAccess": "IT services", "SoftwareUpdate": "IT services",
    "VirtAssistant": "Internet of Things", "Web": "News and entertainment",
    "Download": "Content sharing", "Database": "Cloud computing platform",
    "DataTransfer": "Development tools", "Advertisement": "Advertising",
    "Cybersecurity": "Security",
}
# nDPI categories that are not cloud apps (protocol plumbing, adult sites).
NDPI_SKIP_CATEGORIES = {"AdultContent", "Network", "System", "ConnCheck"}

# v2fly category-* list -> catalog category, in priority order (the first list a service file is
# included by that appears here decides). Lists not named here (companies, orgs, country
# aggregates, IP-geo, DoH/NTP/STUN servers, speed tests) place nothing.
V2FLY_CATEGORY = [
    ("category-ai-chat-!cn", "Generative AI"), ("category-ai-!cn", "Generative AI"),
    ("category-ai-cn", "Generative AI"), ("category-ai-ru", "Generative AI"),
    ("category-netdisk-!cn", "Cloud storage"), ("category-netdisk-cn", "Cloud storage"),
    ("category-ipfs", "Cloud storage"),
    ("category-password-management", "Security"), ("category-antivirus", "Security"),
    ("category-vpnservices", "Security"), ("category-anticensorship", "Security"),
    ("category-proxy-tunnels", "Security"), ("category-network-security-cn", "Security"),
    ("category-remote-control", "IT services"),
    ("category-collaborate-cn", "Collaboration"), ("category-documents-cn", "Productivity"),
    ("category-voip", "Communications"), ("category-communication", "Communications"),
    ("category-number-verification-cn", "Communications"),
    ("category-social-media-!cn", "Social network"), ("category-social-media-cn", "Social network"),
    ("category-social-media-ir", "Social network"),
    ("category-forums", "Forums"), ("category-forums-ir", "Forums"), ("category-forums-ru", "Forums"),
    ("category-container", "Development tools"), ("category-dev", "Development tools"),
    ("category-dev-cn", "Development tools"),
    ("category-cdn-!cn", "Hosting services"), ("category-cdn-cn", "Hosting services"),
    ("category-ddns", "Hosting services"), ("category-httpdns-cn", "IT services"),
    ("category-browser-!cn", "IT services"), ("category-android-app-download", "IT services"),
    ("category-mobile-repair", "IT services"), ("category-electronic-cn", "IT services"),
    ("category-cryptocurrency", "Accounting and finance"),
    ("category-finance", "Accounting and finance"), ("category-bank-cn", "Accounting and finance"),
    ("category-bank-ir", "Accounting and finance"), ("category-bank-jp", "Accounting and finance"),
    ("category-bank-mm", "Accounting and finance"), ("category-bank-ru", "Accounting and finance"),
    ("category-securities-cn", "Accounting and finance"),
    ("category-bourse-ir", "Accounting and finance"),
    ("category-payment-ir", "Accounting and finance"),
    ("category-insurance-ir", "Accounting and finance"),
    ("category-enterprise-query-platform-cn", "Business intelligence"),
    ("category-outsource-cn", "Business management"),
    ("category-ecommerce", "E-commerce"), ("category-ecommerce-ru", "E-commerce"),
    ("category-retail-ru", "E-commerce"), ("category-shopping-ir", "E-commerce"),
    ("category-food-cn", "E-commerce"),
    ("category-logistics-cn", "Supply chain and logistics"),
    ("category-travel-ir", "Transportation and travel"),
    ("category-travel-ru", "Transportation and travel"),
    ("category-automobile-cn", "Transportation and travel"),
    ("category-hospital-cn", "Health"), ("category-medicine-ru", "Health"),
    ("category-scholar-!cn", "Education"), ("category-scholar-cn", "Education"),
    ("category-scholar-hk", "Education"), ("category-scholar-ir", "Education"),
    ("category-scholar-uk", "Education"), ("category-education-cn", "Education"),
    ("category-education-ir", "Education"), ("category-education-ru", "Education"),
    ("category-mooc-cn", "Education"), ("category-olympiad-in-informatics", "Education"),
    ("category-cas", "Education"),
    ("category-games-!cn", "Gaming"), ("category-games-cn", "Gaming"), ("category-games", "Gaming"),
    ("category-game-accelerator-cn", "Gaming"), ("category-enhance-gaming", "Gaming"),
    ("category-betting-ru", "Gaming"),
    ("category-pt", "Content sharing"), ("category-public-tracker", "Content sharing"),
    ("category-web-archive", "Content sharing"), ("category-urlshortner", "Marketing"),
    ("category-blog-cn", "Content management"), ("category-wiki-cn", "News and entertainment"),
    ("category-tech-media", "Media"), ("category-tech-media-ru", "Media"),
    ("category-media", "Media"), ("category-media-cn", "Media"), ("category-media-ir", "Media"),
    ("category-media-ru", "Media"), ("category-media-ru-blocked", "Media"),
    ("category-news-ir", "Media"),
    ("category-entertainment", "News and entertainment"),
    ("category-entertainment-cn", "News and entertainment"),
    ("category-entertainment-ru", "News and entertainment"),
    ("category-acg", "News and entertainment"), ("category-novel", "News and entertainment"),
    ("category-emby", "News and entertainment"),
    ("category-ads", "Advertising"), ("category-ads-all", "Advertising"),
    ("category-ads-ir", "Advertising"),
]
# Lists whose entries are one kind of thing rather than named services: one app each.
V2FLY_GROUPED = {
    "category-public-tracker": ("bittorrent-public-trackers", "BitTorrent public trackers"),
}
# Lists of one country's sites (v2fly's `-cn` lists are mainland China's banks, media,
# schools...): the country is the headquarters of a site listed there, and of a service file
# that only such lists include.
V2FLY_COUNTRY = {"-cn": "CN", "-ru": "RU", "-ir": "IR", "-jp": "JP", "-mm": "MM"}


def v2fly_country(lists):
    """The country all of `lists` belong to, or None."""
    found = {c for suffix, c in V2FLY_COUNTRY.items() for x in lists if x.endswith(suffix)}
    every = all(any(x.endswith(sfx) for sfx in V2FLY_COUNTRY) for x in lists)
    return found.pop() if lists and every and len(found) == 1 else None


V2FLY_PRIORITY = {c: i for i, (c, _) in enumerate(V2FLY_CATEGORY)}
V2FLY_MAP = dict(V2FLY_CATEGORY)

# 2factorauth category -> catalog category (the first mapped one of an entry decides).
# Unmapped: "other", "utilities" (power and water companies), "government".
TWOFA_CATEGORY = {
    "banking": "Accounting and finance", "finance": "Accounting and finance",
    "investing": "Accounting and finance", "payments": "Accounting and finance",
    "cryptocurrencies": "Accounting and finance", "insurance": "Accounting and finance",
    "crowdfunding": "Accounting and finance", "developer": "Development tools",
    "retail": "E-commerce", "food": "E-commerce", "tickets": "E-commerce",
    "universities": "Education", "education": "Education", "hosting": "Hosting services",
    "domains": "Hosting services", "gaming": "Gaming", "betting": "Gaming",
    "marketing": "Marketing", "communication": "Communications", "email": "Webmail",
    "social": "Social network", "entertainment": "News and entertainment",
    "security": "Security", "identity": "Security", "vpn": "Security",
    "backup": "Cloud storage", "cloud": "Cloud storage", "health": "Health",
    "travel": "Transportation and travel", "transport": "Transportation and travel",
    "creativity": "Content management", "iot": "Internet of Things",
    "task": "Project management", "remote": "IT services",
    "postal": "Supply chain and logistics", "legal": "Business management",
}
SOURCE_ORDER = ("manual", "ndpi", "gdpr-tracker", "v2fly", "2factorauth")

BOOL_KEYS = {
    "mfa", "encryption_at_rest", "http_security_headers", "trusted_certificate", "audit_trail",
    "saml", "ip_restrictions", "password_policy", "pen_testing", "file_sharing", "upload",
    "iso_27001", "iso_27017", "iso_27018", "iso_27701", "soc1", "soc2", "soc3", "pci_dss",
    "hipaa", "csa_star", "fedramp", "gdpr", "dmca", "data_ownership", "data_retention_policy",
    "gdpr_dpa", "gdpr_right_to_erasure", "gdpr_data_portability",
}
# Short names accepted in manual_apps.txt.
ALIASES = {"hq": "hq_country", "host": "hosting_company", "dc": "data_centers",
           "breach": "latest_breach", "tls": "tls_version", "domain": "domain_registered"}

LABEL_RE = re.compile(r"^[a-z0-9_-]{1,63}$")
SLUG_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


PSL_FILE = "/usr/share/publicsuffix/public_suffix_list.dat"  # Debian package `publicsuffix`


def load_registry_suffixes(path):
    """The ICANN part of the Public Suffix List: (exact suffixes, wildcard parents,
    exceptions). The catalog refuses rules that are such a suffix (matcher.rs), so the
    generator must not emit them."""
    exact, wild, exc = set(), set(), set()
    icann = False
    for raw in open(path, encoding="utf-8"):
        line = raw.strip()
        if "===BEGIN ICANN DOMAINS===" in line:
            icann = True
        elif "===END ICANN DOMAINS===" in line:
            icann = False
        elif icann and line and not line.startswith("//"):
            line = line.split()[0].encode("idna").decode("ascii") if not line.isascii() else line
            if line.startswith("!"):
                exc.add(line[1:])
            elif line.startswith("*."):
                wild.add(line[2:])
            else:
                exact.add(line)
    return exact, wild, exc


REGISTRY = None


def is_registry_suffix(host):
    exact, wild, exc = REGISTRY
    if host in exact:
        return True
    parent = host.split(".", 1)[1] if "." in host else ""
    return parent in wild and host not in exc


def fail(msg):
    sys.exit(f"gen_catalog: {msg}")


def valid_host(host):
    return (0 < len(host) <= 253 and all(LABEL_RE.match(l) for l in host.split("."))
            and not ("." in host and is_registry_suffix(host)))


def slug(text):
    s = re.sub(r"([a-z0-9])([A-Z])", r"\1-\2", text)
    s = re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")
    return s


def expand_domain(tok, where):
    """manual token -> rules: `x.com` both exact and `*.x.com`; `=x.com` exact; `*.x.com`."""
    tok = tok.strip().lower().rstrip(".")
    if tok.startswith("="):
        rules = [tok[1:]]
    elif tok.startswith("*."):
        rules = [tok]
    else:
        rules = [tok, "*." + tok]
    for r in rules:
        host = r[2:] if r.startswith("*.") else r
        if not valid_host(host):
            fail(f"{where}: bad domain {tok!r}")
    return rules


def parse_attrs(text, bundles, where):
    out = {}
    for tok in text.split():
        if tok.startswith("%"):
            if tok[1:] not in bundles:
                fail(f"{where}: unknown bundle {tok}")
            out.update(bundles[tok[1:]])
            continue
        neg = tok.startswith("!")
        tok = tok.lstrip("!")
        key, _, val = tok.partition("=")
        key = ALIASES.get(key, key)
        if key in BOOL_KEYS:
            if val:
                fail(f"{where}: {key} takes no value")
            out[key] = not neg
        elif key in ("founded", "domain_registered", "popularity"):
            out[key] = int(val)
        elif key == "latest_breach":
            out[key] = "none" if val == "none" else int(val)
        elif key == "hq_country":
            if not re.match(r"^[A-Z]{2}$", val):
                fail(f"{where}: bad country {val!r}")
            out[key] = val
        elif key == "holding":
            if val not in ("public", "private"):
                fail(f"{where}: bad holding {val!r}")
            out[key] = val
        elif key == "tls_version":
            if val not in ("1.0", "1.1", "1.2", "1.3"):
                fail(f"{where}: bad tls {val!r}")
            out[key] = val
        elif key == "data_centers":
            out[key] = val.split(",")
        elif key == "ip":
            import ipaddress
            nets = []
            for cidr in val.split(","):
                try:
                    nets.append(str(ipaddress.ip_network(cidr, strict=True)))
                except ValueError:
                    fail(f"{where}: bad CIDR {cidr!r}")
            out["ip_ranges"] = nets
        elif key == "hosting_company":
            out[key] = val.replace("_", " ")
        else:
            fail(f"{where}: unknown attribute {key!r}")
    return out


class App:
    def __init__(self, id_, name, vendor, category, source):
        if not SLUG_RE.match(id_):
            fail(f"bad id {id_!r}")
        self.id, self.name, self.vendor = id_, name, vendor
        if category.lower() not in CANON:
            fail(f"{id_}: unknown category {category!r}")
        self.category = CANON[category.lower()]
        self.domains = []
        self.ip_ranges = []
        self.domain_sources = set()
        self.attributes = {}
        self.sources = {"app": source}

    def set_attrs(self, attrs, source, overwrite=True):
        for k, v in attrs.items():
            if k in self.attributes and not overwrite:
                continue
            self.attributes[k] = v
            self.sources[k] = source

    def to_json(self):
        d = {"id": self.id, "name": self.name}
        if self.vendor:
            d["vendor"] = self.vendor
        d["category"] = self.category
        d["domains"] = self.domains
        if self.ip_ranges:
            d["ip_ranges"] = self.ip_ranges
        if self.attributes:
            d["attributes"] = dict(sorted(self.attributes.items()))
        srcs = dict(self.sources)
        if self.ip_ranges:
            srcs["ip_ranges"] = "manual"
        if self.domain_sources:
            srcs["domains"] = "+".join(s for s in SOURCE_ORDER if s in self.domain_sources)
        d["sources"] = dict(sorted(srcs.items()))
        return d


class Builder:
    def __init__(self):
        self.apps = {}
        self.rule_owner = {}
        self.dropped = []

    def owner_of(self, host):
        """The app the matcher would give `host`: its exact rule, else the nearest wildcard."""
        if host in self.rule_owner:
            return self.rule_owner[host]
        labels = host.split(".")
        for i in range(1, len(labels)):
            o = self.rule_owner.get("*." + ".".join(labels[i:]))
            if o is not None:
                return o
        return None

    def add_free_rules(self, app, rules, source):
        """Adds only rules whose names no app classifies yet: later sources fill gaps and never
        take a name from an app an earlier source placed it in. Returns how many were added."""
        added = 0
        for r in rules:
            host = r[2:] if r.startswith("*.") else r
            probe = "tollgate-probe." + host if r.startswith("*.") else host
            if r in self.rule_owner or self.owner_of(probe) is not None:
                continue
            self.rule_owner[r] = app.id
            app.domains.append(r)
            app.domain_sources.add(source)
            added += 1
        return added

    def new_id(self, base):
        id_ = slug(base)[:60].strip("-") or "app"
        n, cand = 2, id_
        while cand in self.apps:
            cand, n = f"{id_}-{n}", n + 1
        return cand

    def add_rules(self, app, rules, source):
        for r in rules:
            owner = self.rule_owner.get(r)
            if owner is None:
                self.rule_owner[r] = app.id
                app.domains.append(r)
                app.domain_sources.add(source)
            elif owner != app.id:
                self.dropped.append((source, app.id, r, owner))


def prune_redundant(b):
    """Drops rules that the same app's nearest enclosing wildcard already covers (nDPI lists
    e.g. both `getdropbox.com` and `log.getdropbox.com`). The nearest enclosing wildcard is
    the one the matcher would use, so dropping such a rule changes no classification."""
    pruned = 0
    for app in b.apps.values():
        keep = []
        for r in app.domains:
            host = r[2:] if r.startswith("*.") else r
            labels = host.split(".")
            owner = None
            for i in range(1, len(labels) - 1):
                owner = b.rule_owner.get("*." + ".".join(labels[i:]))
                if owner is not None:
                    break
            # Without this rule a name it matches falls through to that nearest wildcard
            # (nothing lies between them), which gives the same app. Removing a wildcard this
            # way leaves rules below it with a nearest wildcard of the same app, by induction.
            if owner == app.id:
                pruned += 1
                continue
            keep.append(r)
        app.domains = keep
    return pruned


def read_manual(path, b):
    vendors, bundles = {}, {}
    ndpi_map, gdpr_map = {}, {}
    section = "apps"
    for n, raw in enumerate(open(path, encoding="utf-8"), 1):
        line = raw.split("#", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        where = f"{os.path.basename(path)}:{n}"
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        f = [x.strip() for x in line.split("|")]
        if section == "vendors":
            # key|Display name|attrs
            if len(f) != 3:
                fail(f"{where}: vendor lines have 3 fields")
            vendors[f[0]] = (f[1], parse_attrs(f[2], bundles, where))
        elif section == "bundles":
            if len(f) != 2:
                fail(f"{where}: bundle lines have 2 fields")
            bundles[f[0]] = parse_attrs(f[1], bundles, where)
        elif section == "ndpi":
            # nDPI display name|app id or -|category|display name|vendor key or name|attrs
            # (all but the first two optional; used when the app is not in [apps])
            f += [""] * (6 - len(f))
            vendor, vattrs = (f[4] or None), {}
            if f[4] in vendors:
                vendor, vattrs = vendors[f[4]]
            attrs = dict(vattrs)
            attrs.update(parse_attrs(f[5], bundles, where))
            ndpi_map[f[0]] = (f[1], f[2] or None, f[3] or None, vendor, attrs)
        elif section == "gdpr":
            # tracker id|app id or -|category (optional)|extra domains (optional)
            gdpr_map[f[0]] = (f[1], f[2] if len(f) > 2 and f[2] else None,
                              f[3].split() if len(f) > 3 else [])
        elif section == "apps":
            # id|Name|vendor key or text|Category|domains|attrs
            if len(f) != 6:
                fail(f"{where}: app lines have 6 fields, got {len(f)}")
            id_, name, vkey, cat, doms, attrs = f
            if id_ in b.apps:
                fail(f"{where}: duplicate id {id_}")
            vattrs = {}
            vendor = vkey or None
            if vkey in vendors:
                vendor, vattrs = vendors[vkey]
            app = App(id_, name, vendor, cat, "manual")
            app.set_attrs(vattrs, "manual")
            parsed = parse_attrs(attrs, bundles, where)
            app.ip_ranges = parsed.pop("ip_ranges", [])
            app.set_attrs(parsed, "manual")
            rules = [r for tok in doms.split() for r in expand_domain(tok, where)]
            b.add_rules(app, rules, "manual")
            b.apps[id_] = app
        else:
            fail(f"{where}: unknown section [{section}]")
    return ndpi_map, gdpr_map


def read_ndpi(path, b, ndpi_map):
    by_app = {}
    header = None
    for raw in open(path, encoding="utf-8"):
        if raw.startswith("#"):
            continue
        cols = raw.rstrip("\n").split("\t")
        if header is None:
            header = cols
            continue
        row = dict(zip(header, cols))
        by_app.setdefault(row["app"], []).append(row)
    used = 0
    for name, rows in sorted(by_app.items()):
        target, cat, display, vendor, attrs = ndpi_map.get(name, (None, None, None, None, {}))
        if target == "-":
            continue
        cats = [r["category"] for r in rows]
        main_cat = max(set(cats), key=cats.count)
        if target is None and main_cat in NDPI_SKIP_CATEGORIES:
            continue
        id_ = target or slug(name)
        app = b.apps.get(id_)
        if app is None:
            category = cat or NDPI_CATEGORY.get(main_cat)
            if category is None:
                fail(f"nDPI app {name}: no category for {main_cat}")
            app = App(id_, display or name, vendor, category, "ndpi")
            if display or vendor:
                app.sources["app"] = "ndpi+manual"
            app.set_attrs(attrs, "manual")
            b.apps[id_] = app
        used += 1
        rules = []
        for r in rows:
            p = r["hostname_pattern"].strip().lower()
            if not p or p.endswith(".") or p.endswith("-"):
                continue  # not end-anchored in nDPI: no equivalent rule
            if p.startswith("."):
                p = p[1:]
                cand = ["*." + p]
            else:
                cand = [p, "*." + p]
            if not valid_host(p) or "." not in p:
                continue
            rules += cand
        b.add_rules(app, rules, "ndpi")
    return used


CERTS = [
    (re.compile(r"ISO 27001"), "iso_27001"), (re.compile(r"ISO 27017"), "iso_27017"),
    (re.compile(r"ISO 27018"), "iso_27018"), (re.compile(r"SOC 1"), "soc1"),
    (re.compile(r"SOC 2"), "soc2"), (re.compile(r"SOC 3"), "soc3"),
    (re.compile(r"PCI DSS"), "pci_dss"), (re.compile(r"HIPAA"), "hipaa"),
    (re.compile(r"^CSA"), "csa_star"),
]
HOSTS = {"AWS": "AWS", "Google Cloud": "Google Cloud", "Microsoft Azure": "Azure",
         "Azure": "Azure"}


def read_gdpr(folder, b, gdpr_map):
    used = 0
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        d = json.load(open(path, encoding="utf-8"))
        tid = d.get("id") or os.path.basename(path)[:-5]
        target, cat, extra = gdpr_map.get(tid, (None, None, []))
        if target == "-":
            continue
        id_ = target or tid
        app = b.apps.get(id_)
        if app is None:
            if cat is None:
                fail(f"gdpr-tracker {tid}: no category (add it to [gdpr] in manual_apps.txt)")
            app = App(id_, d["name"].strip(), None, cat, "gdpr-tracker")
            b.apps[id_] = app
        used += 1
        attrs = {}
        hq = (d.get("countryHQ") or "").strip().upper()
        hq = {"UK": "GB"}.get(hq, hq)
        if re.match(r"^[A-Z]{2}$", hq):
            attrs["hq_country"] = hq
        for c in d.get("certifications") or []:
            for rx, key in CERTS:
                if rx.search(c):
                    attrs[key] = True
        hosts = [h.strip() for h in d.get("hostingProviders") or [] if h.strip()]
        if hosts:
            attrs["hosting_company"] = HOSTS.get(hosts[0], hosts[0])
        dcs = [x.strip() for x in d.get("dataCenters") or [] if x.strip()]
        if dcs:
            attrs["data_centers"] = dcs
        breaches = d.get("dataBreaches") or []
        years = [int(y) for br in breaches for y in re.findall(r"(?:19|20)\d\d", br.get("date") or "")]
        if years:
            attrs["latest_breach"] = max(years)
        elif not breaches:
            attrs["latest_breach"] = "none"
        if d.get("gdprReadyStatus") == "ready":
            attrs["gdpr"] = True
        if (d.get("dpaUrl") or "").strip():
            attrs["gdpr_dpa"] = True
        app.set_attrs(attrs, "gdpr-tracker", overwrite=False)
        rules = []
        site = re.sub(r"^https?://", "", (d.get("website") or "").strip().lower())
        host = site.split("/")[0].split("?")[0]
        if host.startswith("www."):
            host = host[4:]
        for h in ([host] if host else []) + extra:
            if valid_host(h) and "." in h:
                rules += [h, "*." + h]
        b.add_rules(app, rules, "gdpr-tracker")
    return used


def v2fly_rules(rule):
    """A v2fly.tsv rule -> catalog rules (`x`: x and below; `=x`: x only), or [] if invalid."""
    exact = rule.startswith("=")
    host = rule.lstrip("=").strip().lower().rstrip(".")
    if not valid_host(host) or "." not in host:
        return []
    return [host] if exact else [host, "*." + host]


def pretty(name):
    return " ".join(w[:1].upper() + w[1:] for w in re.split(r"[-_]", name) if w)


def read_v2fly(path, b):
    """v2fly service files: one app each (merged into the app that already holds most of its
    names); category lists: one app per listed site no app claims yet."""
    files, cats, kinds = {}, {}, {}
    for raw in open(path, encoding="utf-8"):
        if raw.startswith("#") or raw.startswith("file\t"):
            continue
        f, kind, rule, cl = raw.rstrip("\n").split("\t")
        files.setdefault(f, []).append(rule)
        kinds[f] = kind
        if cl:
            cats[f] = cl.split(",")
    new = merged = sites = 0

    def category_of(f):
        mapped = sorted((V2FLY_PRIORITY[c], V2FLY_MAP[c]) for c in cats.get(f, ())
                        if c in V2FLY_MAP)
        return mapped[0][1] if mapped else None

    for f in sorted(x for x in files if kinds[x] == "service"):
        rules = [r for x in files[f] for r in v2fly_rules(x)]
        hosts = [r for r in rules if not r.startswith("*.")]
        owners = {}
        for h in hosts:
            o = b.owner_of(h)
            if o is not None:
                owners[o] = owners.get(o, 0) + 1
        target = b.apps.get(f) if f in b.apps else None
        if target is None and owners:
            top, n = max(owners.items(), key=lambda kv: (kv[1], kv[0]))
            if 2 * n >= len(hosts):
                target = b.apps[top]
        if target is not None:
            if b.add_free_rules(target, rules, "v2fly"):
                merged += 1
            continue
        cat = category_of(f)
        if cat is None:
            continue
        app = App(b.new_id(f), pretty(f), None, cat, "v2fly")
        if b.add_free_rules(app, rules, "v2fly"):
            country = v2fly_country(cats.get(f, []))
            if country:
                app.set_attrs({"hq_country": country}, "v2fly")
            b.apps[app.id] = app
            new += 1
    for f in sorted(x for x in files if kinds[x] == "category"):
        cat = V2FLY_MAP.get(f)
        if cat is None:
            continue
        if f in V2FLY_GROUPED:
            id_, name = V2FLY_GROUPED[f]
            app = App(id_, name, None, cat, "v2fly")
            rules = [r for x in sorted(files[f]) for r in v2fly_rules(x)]
            if b.add_free_rules(app, rules, "v2fly"):
                b.apps[app.id] = app
                sites += 1
            continue
        # Parents first, so that a listed site's own sub-domains join it rather than each
        # becoming an app.
        for rule in sorted(files[f], key=lambda r: (r.lstrip("=").count("."), r)):
            rules = v2fly_rules(rule)
            if not rules:
                continue
            host = rules[0]
            if b.owner_of(host) is not None:
                continue
            app = App(b.new_id(host), host, None, cat, "v2fly")
            if b.add_free_rules(app, rules, "v2fly"):
                country = v2fly_country([f])
                if country:
                    app.set_attrs({"hq_country": country}, "v2fly")
                b.apps[app.id] = app
                sites += 1
    return new, merged, sites


def read_twofa(path, b):
    """2factorauth entries: `mfa` (yes when the service lists any 2FA method, no when it lists
    none) for the app that holds the entry's domain, else a new app."""
    new = facts = 0
    header = None
    for raw in open(path, encoding="utf-8"):
        if raw.startswith("#"):
            continue
        cols = raw.rstrip("\n").split("\t")
        if header is None:
            header = cols
            continue
        row = dict(zip(header, cols))
        domains = [row["domain"]] + row["additional_domains"].split()
        rules = [r for d in domains for r in v2fly_rules(d)]
        if not rules:
            continue
        mfa = row["tfa"] != "-"
        owner = b.owner_of(rules[0])
        if owner is not None:
            app = b.apps[owner]
        else:
            cats = [TWOFA_CATEGORY[c] for c in row["categories"].split(",") if c in TWOFA_CATEGORY]
            if not cats:
                continue
            app = App(b.new_id(row["name"]), row["name"], None, cats[0], "2factorauth")
            if not b.add_free_rules(app, rules, "2factorauth"):
                continue
            b.apps[app.id] = app
            new += 1
        if "mfa" not in app.attributes:
            app.set_attrs({"mfa": mfa}, "2factorauth")
            facts += 1
    return new, facts


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default=os.environ.get("TOLLGATE_CORPUS") or
                    os.path.join(HERE, "..", "..", "..", "shared", "corpus"))
    ap.add_argument("--out", default=os.path.join(HERE, "catalog.json"))
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--psl", default=PSL_FILE, help="public_suffix_list.dat")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    cat_dir = os.path.join(args.corpus, "catalog")
    if not os.path.isdir(cat_dir):
        fail(f"corpus not found at {cat_dir} (use --corpus or TOLLGATE_CORPUS)")
    global REGISTRY
    if not os.path.isfile(args.psl):
        fail(f"Public Suffix List not found at {args.psl} (apt-get install publicsuffix, or --psl)")
    REGISTRY = load_registry_suffixes(args.psl)
    b = Builder()
    ndpi_map, gdpr_map = read_manual(os.path.join(HERE, "manual_apps.txt"), b)
    manual = len(b.apps)
    n_ndpi = read_ndpi(os.path.join(cat_dir, "ndpi_hosts.tsv"), b, ndpi_map)
    n_gdpr = read_gdpr(os.path.join(cat_dir, "gdpr-tracker", "data"), b, gdpr_map)
    v_new, v_merged, v_sites = read_v2fly(os.path.join(HERE, "upstream", "v2fly.tsv"), b)
    t_new, t_facts = read_twofa(os.path.join(HERE, "upstream", "twofactorauth.tsv"), b)
    pruned = prune_redundant(b)
    empty = [a.id for a in b.apps.values() if not a.domains]
    if empty:
        fail(f"apps without any domain rule: {', '.join(sorted(empty))}")
    apps = [b.apps[k].to_json() for k in sorted(b.apps)]
    lines = [json.dumps(a, ensure_ascii=False, separators=(",", ":")) for a in apps]
    text = ('{"version":1,"generated_by":"configs/catalog/gen_catalog.py",'
            '"licence":"data derived from nDPI (LGPL-3.0-or-later), gdpr-tracker (MIT), '
            'v2fly/domain-list-community (MIT) and 2factorauth/twofactorauth (MIT); '
            'see configs/catalog/SOURCES.md",\n"apps":[\n' + ",\n".join(lines) + "\n]}\n")
    rules = sum(len(a["domains"]) for a in apps)
    print(f"v2fly: {v_new} service apps, {v_merged} merged, {v_sites} listed sites; "
          f"2factorauth: {t_new} apps, {t_facts} mfa facts", file=sys.stderr)
    print(f"apps {len(apps)} (manual {manual}, from nDPI {n_ndpi}, from gdpr-tracker {n_gdpr}); "
          f"domain rules {rules}; dropped as already claimed {len(b.dropped)}, as redundant {pruned}",
          file=sys.stderr)
    if args.verbose:
        for src, app, rule, owner in b.dropped:
            print(f"  dropped {src} {app}: {rule} (owned by {owner})", file=sys.stderr)
    if args.check:
        old = open(args.out, encoding="utf-8").read() if os.path.exists(args.out) else ""
        if old != text:
            sys.exit("gen_catalog: catalog.json is stale; run gen_catalog.py")
        return
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)


if __name__ == "__main__":
    main()
