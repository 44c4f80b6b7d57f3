//! SIGHUP: the config file read again and what can change without a restart applied.

use tollgate_policy::TagBook;

use super::Core;

impl Core {
    /// SIGHUP: reads the config file again and applies what can change without a restart:
    /// tags and tag rules (the kernel's verdicts follow at once, as for `tollgate app tag`),
    /// session and access policies, and which apps are under session control. A config that
    /// does not load leaves everything as it was. Changes to anything else are reported as
    /// needing a restart.
    pub(super) fn reload(&mut self) {
        let Some(path) = self.config_path.clone() else {
            crate::outln!(
                "tollgate: SIGHUP: running on the embedded default config; nothing to reload"
            );
            return;
        };
        let new = match crate::config::Config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("reload refused, the running config stays: {e}");
                crate::outln!("tollgate: reload refused, the running config stays: {e}");
                return;
            }
        };
        let tags = match TagBook::new(
            &self.catalog,
            &new.apps,
            new.tag_rules.clone(),
            self.live_tags.clone(),
        ) {
            Ok(t) => t,
            Err(e) => {
                crate::outln!(
                    "tollgate: reload refused ({}: apps/tag_rules: {e}), the running config stays",
                    path.display()
                );
                return;
            }
        };
        if let Some(s) = &mut self.session
            && let Err(e) = s.reload(&new)
        {
            crate::outln!(
                "tollgate: reload refused ({}: {e:#}), the running config stays",
                path.display()
            );
            return;
        }
        let needs_restart: Vec<&str> = [
            ("mode", new.mode != self.cfg.mode),
            ("interfaces", new.interfaces != self.cfg.interfaces),
            ("custom_apps", new.custom_apps != self.cfg.custom_apps),
            ("catalog", new.catalog != self.cfg.catalog),
            ("enforcement", new.enforcement != self.cfg.enforcement),
            ("proxy", new.proxy != self.cfg.proxy),
            (
                "session control started",
                self.session.is_none() && !crate::session::session_apps(&new).is_empty(),
            ),
        ]
        .into_iter()
        .filter_map(|(what, changed)| changed.then_some(what))
        .collect();
        self.tags = tags;
        self.enforcer
            .set_own_addresses(crate::session::own_addresses());
        if self.session.is_some() {
            self.enforcer
                .set_session_apps(crate::session::session_apps(&new));
        }
        self.cfg.apps = new.apps;
        self.cfg.tag_rules = new.tag_rules;
        self.cfg.session_policies = new.session_policies;
        self.cfg.access_policies = new.access_policies;
        self.apply_tags();
        crate::outln!(
            "tollgate: reloaded {} (tags, tag rules, session and access policies){}",
            path.display(),
            if needs_restart.is_empty() {
                String::new()
            } else {
                format!(
                    "; changes to {} take effect after a restart",
                    needs_restart.join(", ")
                )
            }
        );
    }
}
