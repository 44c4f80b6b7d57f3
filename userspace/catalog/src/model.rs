//! The app model: an app, its risk attributes in four groups, and the list of properties that
//! the risk score is made from (with how each value is scored 0–10, 10 being the safest).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// One cloud app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    /// Stable lowercase slug (`dropbox`, `google-drive`).
    pub id: String,
    /// Display name (`Google Drive`).
    pub name: String,
    /// The company behind it, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// One of [`crate::CATEGORIES`], canonical spelling.
    pub category: String,
    /// Domain rules: `host.example` matches that name only; `*.example.com` matches every
    /// name below `example.com` (not `example.com` itself: list both when both are meant).
    pub domains: Vec<String>,
    /// IP ranges (CIDR), used only when no domain rule matched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_ranges: Vec<ipnet::IpNet>,
    /// Risk attributes; any of them may be unknown.
    #[serde(default)]
    pub attributes: Attributes,
    /// Where each fact comes from: key `app` (name, vendor, category), `domains`, and one key
    /// per attribute; value `ndpi`, `gdpr-tracker`, `manual` (shipped data) or `config`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sources: BTreeMap<String, String>,
}

/// Whether a company is publicly traded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Holding {
    /// Listed on a stock exchange (or a subsidiary of a listed company).
    Public,
    /// Privately held.
    Private,
}

/// Highest TLS version the service's endpoints negotiate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.0.
    #[serde(rename = "1.0")]
    Tls10,
    /// TLS 1.1.
    #[serde(rename = "1.1")]
    Tls11,
    /// TLS 1.2.
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3.
    #[serde(rename = "1.3")]
    Tls13,
}

/// The most recent publicly known data breach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatestBreach {
    /// No breach publicly known (written `"none"`).
    NoneKnown,
    /// Year of the latest known breach (written as a number).
    Year(u16),
}

impl Serialize for LatestBreach {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            LatestBreach::NoneKnown => s.serialize_str("none"),
            LatestBreach::Year(y) => s.serialize_u16(*y),
        }
    }
}

impl<'de> Deserialize<'de> for LatestBreach {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Year(u16),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Year(y) => Ok(LatestBreach::Year(y)),
            Raw::Text(t) if t.eq_ignore_ascii_case("none") => Ok(LatestBreach::NoneKnown),
            Raw::Text(t) => Err(serde::de::Error::custom(format!(
                "latest_breach: expected a year or \"none\", got {t:?}"
            ))),
        }
    }
}

/// Risk attributes. Every field is optional: `None` is "unknown". Booleans mean "the app has
/// it" (MFA supported, ISO 27001 certified, customer owns its data, ...).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Attributes {
    // ---- General
    /// Year the vendor was founded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub founded: Option<u16>,
    /// Country of the headquarters, ISO 3166-1 alpha-2 (`US`, `DE`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hq_country: Option<String>,
    /// Publicly traded or private.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holding: Option<Holding>,
    /// Where the data is stored (regions or countries: `EU`, `US`, `DE`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_centers: Option<Vec<String>>,
    /// Who hosts it (`AWS`, `Azure`, `Google Cloud`, `own`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hosting_company: Option<String>,
    /// Year the main domain was registered (the domain's age is derived from it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain_registered: Option<u16>,
    /// Latest publicly known breach.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_breach: Option<LatestBreach>,
    /// How widely used, 1 (niche) to 10 (used by most organisations).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub popularity: Option<u8>,
    // ---- Security
    /// Multi-factor authentication available.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mfa: Option<bool>,
    /// Customer data encrypted at rest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_at_rest: Option<bool>,
    /// Highest TLS version offered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_version: Option<TlsVersion>,
    /// HSTS, CSP, X-Frame-Options and friends set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_security_headers: Option<bool>,
    /// Certificate from a publicly trusted CA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trusted_certificate: Option<bool>,
    /// Admin/user activity audit logs available.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_trail: Option<bool>,
    /// SAML single sign-on supported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saml: Option<bool>,
    /// Access can be restricted to given IP addresses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_restrictions: Option<bool>,
    /// Admins can enforce a password policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_policy: Option<bool>,
    /// Regular third-party penetration tests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pen_testing: Option<bool>,
    /// Users can share files (a data-leak path: scored lower when true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_sharing: Option<bool>,
    /// Users can upload data (a data-leak path: scored lower when true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload: Option<bool>,
    // ---- Compliance
    /// ISO/IEC 27001 certified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iso_27001: Option<bool>,
    /// ISO/IEC 27017 (cloud security) certified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iso_27017: Option<bool>,
    /// ISO/IEC 27018 (PII in public clouds) certified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iso_27018: Option<bool>,
    /// ISO/IEC 27701 (privacy information management) certified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iso_27701: Option<bool>,
    /// SOC 1 report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soc1: Option<bool>,
    /// SOC 2 report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soc2: Option<bool>,
    /// SOC 3 report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soc3: Option<bool>,
    /// PCI DSS compliant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pci_dss: Option<bool>,
    /// HIPAA compliant (BAA available).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hipaa: Option<bool>,
    /// CSA STAR registered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csa_star: Option<bool>,
    /// FedRAMP authorised.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fedramp: Option<bool>,
    /// States GDPR compliance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gdpr: Option<bool>,
    // ---- Legal
    /// Has a DMCA (copyright takedown) policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dmca: Option<bool>,
    /// The customer keeps ownership of its data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_ownership: Option<bool>,
    /// Publishes a data retention policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_retention_policy: Option<bool>,
    /// Offers a GDPR data processing agreement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gdpr_dpa: Option<bool>,
    /// Honours the GDPR right to erasure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gdpr_right_to_erasure: Option<bool>,
    /// Honours the GDPR right to data portability.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gdpr_data_portability: Option<bool>,
}

/// The four attribute groups, each weighted into the total score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Group {
    /// Company facts: age, country, holding, hosting, breaches, popularity.
    General,
    /// Security controls the service offers.
    Security,
    /// Certifications and attestations.
    Compliance,
    /// Terms: data ownership, retention, DMCA, GDPR rights.
    Legal,
}

impl Group {
    /// Every group, in display order.
    pub const ALL: [Group; 4] = [
        Group::General,
        Group::Security,
        Group::Compliance,
        Group::Legal,
    ];

    /// The config key (`general`, `security`, `compliance`, `legal`).
    pub fn key(self) -> &'static str {
        match self {
            Group::General => "general",
            Group::Security => "security",
            Group::Compliance => "compliance",
            Group::Legal => "legal",
        }
    }
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

macro_rules! properties {
    ($( $variant:ident => $field:ident, $group:ident, $label:literal; )*) => {
        /// One scored property. Its key is the attribute's field name and the key used in
        /// `[catalog.weights.properties]`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum Property { $( #[doc = $label] $variant, )* }

        impl Property {
            /// Every property, grouped, in display order.
            pub const ALL: &'static [Property] = &[ $( Property::$variant, )* ];

            /// The attribute / config key (`mfa`, `iso_27001`, ...).
            pub fn key(self) -> &'static str {
                match self { $( Property::$variant => stringify!($field), )* }
            }

            /// Human label (`MFA`, `ISO 27001`).
            pub fn label(self) -> &'static str {
                match self { $( Property::$variant => $label, )* }
            }

            /// The group it is weighted in.
            pub fn group(self) -> Group {
                match self { $( Property::$variant => Group::$group, )* }
            }

            /// The property for a config key.
            pub fn from_key(key: &str) -> Option<Property> {
                match key { $( stringify!($field) => Some(Property::$variant), )* _ => None }
            }

            /// The app's value as JSON (`None` when unknown).
            pub fn value_json(self, a: &Attributes) -> Option<serde_json::Value> {
                match self { $( Property::$variant => a.$field.as_ref().and_then(|v| serde_json::to_value(v).ok()), )* }
            }

            /// Whether the app has a value for it.
            pub fn is_known(self, a: &Attributes) -> bool {
                match self { $( Property::$variant => a.$field.is_some(), )* }
            }
        }
    };
}

properties! {
    Founded => founded, General, "Founded";
    HqCountry => hq_country, General, "Headquarters";
    Holding => holding, General, "Holding";
    DataCenters => data_centers, General, "Data centers";
    HostingCompany => hosting_company, General, "Hosting company";
    DomainRegistered => domain_registered, General, "Domain age";
    LatestBreach => latest_breach, General, "Latest breach";
    Popularity => popularity, General, "Popularity";
    Mfa => mfa, Security, "MFA";
    EncryptionAtRest => encryption_at_rest, Security, "Encryption at rest";
    TlsVersion => tls_version, Security, "TLS version";
    HttpSecurityHeaders => http_security_headers, Security, "HTTP security headers";
    TrustedCertificate => trusted_certificate, Security, "Trusted certificate";
    AuditTrail => audit_trail, Security, "Audit trail";
    Saml => saml, Security, "SAML";
    IpRestrictions => ip_restrictions, Security, "IP address restriction";
    PasswordPolicy => password_policy, Security, "Password policy";
    PenTesting => pen_testing, Security, "Penetration testing";
    FileSharing => file_sharing, Security, "File sharing";
    Upload => upload, Security, "Data upload";
    Iso27001 => iso_27001, Compliance, "ISO 27001";
    Iso27017 => iso_27017, Compliance, "ISO 27017";
    Iso27018 => iso_27018, Compliance, "ISO 27018";
    Iso27701 => iso_27701, Compliance, "ISO 27701";
    Soc1 => soc1, Compliance, "SOC 1";
    Soc2 => soc2, Compliance, "SOC 2";
    Soc3 => soc3, Compliance, "SOC 3";
    PciDss => pci_dss, Compliance, "PCI DSS";
    Hipaa => hipaa, Compliance, "HIPAA";
    CsaStar => csa_star, Compliance, "CSA STAR";
    FedRamp => fedramp, Compliance, "FedRAMP";
    Gdpr => gdpr, Compliance, "GDPR";
    Dmca => dmca, Legal, "DMCA";
    DataOwnership => data_ownership, Legal, "Data ownership";
    DataRetentionPolicy => data_retention_policy, Legal, "Data retention policy";
    GdprDpa => gdpr_dpa, Legal, "GDPR data processing agreement";
    GdprRightToErasure => gdpr_right_to_erasure, Legal, "GDPR right to erasure";
    GdprDataPortability => gdpr_data_portability, Legal, "GDPR data portability";
}

/// Countries whose data-protection law the EU recognises as adequate, plus the EU/EEA
/// itself (GDPR adequacy decisions); headquarters there score best.
const ADEQUATE: &[&str] = &[
    // EU + EEA
    "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT", "LV",
    "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE", "IS", "LI", "NO",
    // adequacy decisions
    "AD", "AR", "CA", "FO", "GG", "IL", "IM", "JP", "JE", "NZ", "KR", "CH", "GB", "UY", "US",
];

/// Jurisdictions where the state can compel access to data with little oversight or that are
/// under broad sanctions; headquarters there score worst.
const HIGH_RISK_JURISDICTIONS: &[&str] = &["BY", "CN", "CU", "IR", "KP", "RU", "SY"];

/// Hosting providers with independently audited data centres (ISO 27001 / SOC 2).
const AUDITED_HOSTS: &[&str] = &[
    "aws",
    "amazon web services",
    "azure",
    "microsoft azure",
    "google cloud",
    "gcp",
    "oracle cloud",
    "ibm cloud",
    "own",
    "alibaba cloud",
    "ovh",
    "ovhcloud",
    "hetzner",
    "digitalocean",
    "rackspace",
    "equinix",
    "cloudflare",
    "akamai",
    "salesforce",
    "fastly",
];

/// Score of a number of years (age of company or domain): one point per year, capped at 10.
fn age_score(since: u16, now: u16) -> f64 {
    f64::from(now.saturating_sub(since).min(10))
}

fn bool_score(v: bool) -> f64 {
    if v { 10.0 } else { 0.0 }
}

impl Property {
    /// Score of the app's value, 0 (worst) to 10 (best), or `None` when unknown.
    ///
    /// Rules: yes/no properties score 10 for yes and 0 for no, except `file_sharing` and
    /// `upload` (yes 5, no 10: they are ways data leaves). Years of age (`founded`,
    /// `domain_registered`) score one point per year up to 10. `latest_breach`: none known 10,
    /// otherwise two points per year since the breach, at most 8. `hq_country`: 10 in the
    /// EU/EEA or a country with a GDPR adequacy decision, 2 in a high-risk jurisdiction
    /// (BY CN CU IR KP RU SY), 6 elsewhere. `holding`: public 10, private 7. `data_centers`:
    /// 10 for two or more locations, 8 for one. `hosting_company`: 10 for audited large
    /// providers or own data centres, 6 for others. `tls_version`: 1.3 10, 1.2 8, 1.1 3,
    /// 1.0 1. `popularity` is its own score (1–10).
    pub fn score(self, a: &Attributes, now_year: u16) -> Option<f64> {
        Some(match self {
            Property::Founded => age_score(a.founded?, now_year),
            Property::HqCountry => {
                let c = a.hq_country.as_deref()?.trim();
                if ADEQUATE.iter().any(|x| x.eq_ignore_ascii_case(c)) {
                    10.0
                } else if HIGH_RISK_JURISDICTIONS
                    .iter()
                    .any(|x| x.eq_ignore_ascii_case(c))
                {
                    2.0
                } else {
                    6.0
                }
            }
            Property::Holding => match a.holding? {
                Holding::Public => 10.0,
                Holding::Private => 7.0,
            },
            Property::DataCenters => match a.data_centers.as_ref()?.len() {
                0 => return None,
                1 => 8.0,
                _ => 10.0,
            },
            Property::HostingCompany => {
                let h = a.hosting_company.as_deref()?.trim();
                if AUDITED_HOSTS.iter().any(|x| x.eq_ignore_ascii_case(h)) {
                    10.0
                } else {
                    6.0
                }
            }
            Property::DomainRegistered => age_score(a.domain_registered?, now_year),
            Property::LatestBreach => match a.latest_breach? {
                LatestBreach::NoneKnown => 10.0,
                LatestBreach::Year(y) => f64::from(now_year.saturating_sub(y).min(4) * 2),
            },
            Property::Popularity => f64::from(a.popularity?.clamp(1, 10)),
            Property::TlsVersion => match a.tls_version? {
                TlsVersion::Tls13 => 10.0,
                TlsVersion::Tls12 => 8.0,
                TlsVersion::Tls11 => 3.0,
                TlsVersion::Tls10 => 1.0,
            },
            Property::FileSharing => {
                if a.file_sharing? {
                    5.0
                } else {
                    10.0
                }
            }
            Property::Upload => {
                if a.upload? {
                    5.0
                } else {
                    10.0
                }
            }
            Property::Mfa => bool_score(a.mfa?),
            Property::EncryptionAtRest => bool_score(a.encryption_at_rest?),
            Property::HttpSecurityHeaders => bool_score(a.http_security_headers?),
            Property::TrustedCertificate => bool_score(a.trusted_certificate?),
            Property::AuditTrail => bool_score(a.audit_trail?),
            Property::Saml => bool_score(a.saml?),
            Property::IpRestrictions => bool_score(a.ip_restrictions?),
            Property::PasswordPolicy => bool_score(a.password_policy?),
            Property::PenTesting => bool_score(a.pen_testing?),
            Property::Iso27001 => bool_score(a.iso_27001?),
            Property::Iso27017 => bool_score(a.iso_27017?),
            Property::Iso27018 => bool_score(a.iso_27018?),
            Property::Iso27701 => bool_score(a.iso_27701?),
            Property::Soc1 => bool_score(a.soc1?),
            Property::Soc2 => bool_score(a.soc2?),
            Property::Soc3 => bool_score(a.soc3?),
            Property::PciDss => bool_score(a.pci_dss?),
            Property::Hipaa => bool_score(a.hipaa?),
            Property::CsaStar => bool_score(a.csa_star?),
            Property::FedRamp => bool_score(a.fedramp?),
            Property::Gdpr => bool_score(a.gdpr?),
            Property::Dmca => bool_score(a.dmca?),
            Property::DataOwnership => bool_score(a.data_ownership?),
            Property::DataRetentionPolicy => bool_score(a.data_retention_policy?),
            Property::GdprDpa => bool_score(a.gdpr_dpa?),
            Property::GdprRightToErasure => bool_score(a.gdpr_right_to_erasure?),
            Property::GdprDataPortability => bool_score(a.gdpr_data_portability?),
        })
    }
}

impl Attributes {
    /// Checks values that serde cannot (ranges, years in the future); `id` names the app.
    pub(crate) fn validate(&self, id: &str, now_year: u16) -> Result<(), crate::CatalogError> {
        let bad = |key: &'static str, reason: String| crate::CatalogError::BadAttribute {
            id: id.to_string(),
            key,
            reason,
        };
        // One year of slack: the reference year comes from the local clock.
        let latest = now_year.saturating_add(1);
        for (key, year) in [
            ("founded", self.founded),
            ("domain_registered", self.domain_registered),
            (
                "latest_breach",
                match self.latest_breach {
                    Some(LatestBreach::Year(y)) => Some(y),
                    _ => None,
                },
            ),
        ] {
            if let Some(y) = year
                && !(1800..=latest).contains(&y)
            {
                return Err(bad(
                    key,
                    format!("year {y} is not between 1800 and {latest}"),
                ));
            }
        }
        if let Some(p) = self.popularity
            && !(1..=10).contains(&p)
        {
            return Err(bad("popularity", format!("{p} is not between 1 and 10")));
        }
        if let Some(c) = &self.hq_country
            && (c.len() != 2 || !c.bytes().all(|b| b.is_ascii_uppercase()))
        {
            return Err(bad(
                "hq_country",
                format!("{c:?} is not an ISO 3166 alpha-2 code such as \"US\""),
            ));
        }
        Ok(())
    }
}
