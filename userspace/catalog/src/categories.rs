//! The app categories, after Defender for Cloud Apps' category list. Apps (shipped and custom)
//! must use one of these; matching is case-insensitive and the canonical spelling is stored.

/// Every category an app may have, in canonical spelling.
pub const CATEGORIES: &[&str] = &[
    "Accounting and finance",
    "Advertising",
    "AI model provider",
    "Business intelligence",
    "Business management",
    "Cloud computing platform",
    "Cloud storage",
    "Code hosting",
    "Collaboration",
    "Communications",
    "Content management",
    "Content sharing",
    "CRM",
    "Customer support",
    "Data analytics",
    "Development tools",
    "E-commerce",
    "Education",
    "Forums",
    "Gaming",
    "Generative AI",
    "Health",
    "Hosting services",
    "HR",
    "Internet of Things",
    "IT services",
    "Marketing",
    "Media",
    "News and entertainment",
    "Online meetings",
    "Operations management",
    "Personal instant messaging",
    "Productivity",
    "Project management",
    "Property management",
    "Sales",
    "Security",
    "Social network",
    "Supply chain and logistics",
    "Transportation and travel",
    "Vendor management systems",
    "Web analytics",
    "Webmail",
    "Website monitoring",
];

/// The canonical spelling of `name` if it is a known category (case-insensitive).
pub fn canonical(name: &str) -> Option<&'static str> {
    let name = name.trim();
    CATEGORIES
        .iter()
        .copied()
        .find(|c| c.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_is_case_insensitive() {
        assert_eq!(canonical("cloud STORAGE"), Some("Cloud storage"));
        assert_eq!(canonical(" crm "), Some("CRM"));
        assert_eq!(canonical("Cloud storages"), None);
    }

    #[test]
    fn list_has_no_duplicates() {
        for (i, a) in CATEGORIES.iter().enumerate() {
            for b in CATEGORIES.iter().skip(i + 1) {
                assert!(!a.eq_ignore_ascii_case(b), "{a} repeated");
            }
        }
    }
}
