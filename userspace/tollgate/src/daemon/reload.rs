//! SIGHUP and central bundles: the config read again (with the applied bundle laid over it)
//! and what can change without a restart applied.

use std::sync::Arc;

use tollgate_policy::TagBook;
use tollgate_sync::bundle::Bundle;

use super::Core;
use crate::config::Config;

impl Core {
    /// SIGHUP: reads the config file again, lays the applied bundle over it, and applies what
    /// can change without a restart. A config that does not load leaves everything as it was.
    pub(super) fn reload(&mut self) {
        let Some(path) = self.config_path.clone() else {
            crate::outln!(
                "tollgate: SIGHUP: running on the embedded default config; nothing to reload"
            );
            return;
        };
        let bundle = self.bundle.clone();
        match self.apply_policy(bundle.as_ref()) {
            Ok(needs_restart) => crate::outln!(
                "tollgate: reloaded {} (tags, tag rules, custom apps, catalog, session, access and activity policies, alert sinks){}",
                path.display(),
                restart_note(&needs_restart)
            ),
            Err(e) => {
                tracing::error!("reload refused, the running config stays: {e}");
                crate::outln!("tollgate: reload refused, the running config stays: {e}");
            }
        }
    }

    /// A verified bundle from the hub, laid over the local config and applied through the
    /// same path as a reload. On error nothing changed and the reason goes back to the hub.
    pub(super) fn apply_bundle(&mut self, bundle: Bundle) -> Result<(), String> {
        let revision = bundle.revision;
        let needs_restart = self.apply_policy(Some(&bundle))?;
        self.bundle = Some(bundle);
        crate::outln!(
            "tollgate: applied hub bundle revision {revision}{}",
            restart_note(&needs_restart)
        );
        self.audit("bundle_applied", None, format!("revision {revision}"));
        Ok(())
    }

    /// The local config (file or embedded default) with `bundle` over it, applied: tags and
    /// tag rules (the kernel's verdicts follow at once, as for `tollgate app tag`), session
    /// and access policies, and which apps are under session control. Returns the sections
    /// that changed but take effect only after a restart.
    fn apply_policy(&mut self, bundle: Option<&Bundle>) -> Result<Vec<&'static str>, String> {
        let local = match &self.config_path {
            Some(path) => Config::load(path),
            None => Config::embedded_default(),
        }
        .map_err(|e| e.to_string())?;
        let new = match bundle {
            Some(b) => local
                .with_bundle(&b.policy_toml, &format!("bundle revision {}", b.revision))
                .map_err(|e| e.to_string())?,
            None => local,
        };
        // The catalog is built again from the new config (custom apps, `[catalog]` weights,
        // risk overrides): cheap next to a reload, and one path for every change to it.
        let catalog = crate::commands::load_catalog(&new, self.config_path.as_deref())
            .map_err(|e| e.to_string())?;
        let tags = TagBook::new(
            &catalog,
            &new.apps,
            new.tag_rules.clone(),
            self.live_tags.clone(),
        )
        .map_err(|e| format!("apps/tag_rules: {e}"))?;
        if let Some(s) = &mut self.session {
            s.reload(&new).map_err(|e| format!("{e:#}"))?;
        }
        if let Some(a) = &mut self.alerting {
            a.reload(&self.cfg, &new)?;
        }
        let needs_restart: Vec<&'static str> = [
            ("mode", new.mode != self.cfg.mode),
            ("interfaces", new.interfaces != self.cfg.interfaces),
            ("dataplane", new.dataplane != self.cfg.dataplane),
            ("enforcement", new.enforcement != self.cfg.enforcement),
            ("proxy", new.proxy != self.cfg.proxy),
            ("hub", new.hub != self.cfg.hub),
            ("activity", new.activity != self.cfg.activity),
            ("geoip", new.geoip != self.cfg.geoip),
            ("console", new.console != self.cfg.console),
            (
                "discovery.interval_secs",
                new.discovery.interval_secs != self.cfg.discovery.interval_secs,
            ),
            (
                "session control started",
                self.session.is_none() && !crate::session::session_apps(&new).is_empty(),
            ),
        ]
        .into_iter()
        .filter_map(|(what, changed)| changed.then_some(what))
        .collect();
        if new.custom_apps != self.cfg.custom_apps || new.catalog != self.cfg.catalog {
            tracing::info!(apps = catalog.len(), "catalog changed");
        }
        let catalog = Arc::new(catalog);
        self.enforcer.set_catalog(&catalog);
        if let Some(s) = &self.session {
            s.set_catalog(catalog.clone());
        }
        self.catalog = catalog;
        self.tags = tags;
        self.enforcer
            .set_own_addresses(crate::session::own_addresses());
        if self.session.is_some() {
            self.enforcer
                .set_session_apps(crate::session::session_apps(&new));
        }
        self.cfg.custom_apps = new.custom_apps;
        self.cfg.catalog = new.catalog;
        self.cfg.apps = new.apps;
        self.cfg.tag_rules = new.tag_rules;
        self.cfg.session_policies = new.session_policies;
        self.cfg.access_policies = new.access_policies;
        self.cfg.activity_policies = new.activity_policies;
        self.cfg.alert_sinks = new.alert_sinks;
        self.cfg.anomaly = new.anomaly;
        if new.app_discovery_policies != self.cfg.app_discovery_policies {
            self.app_discovery.set_policies(&new.app_discovery_policies);
        }
        self.cfg.app_discovery_policies = new.app_discovery_policies;
        if new.connectors != self.cfg.connectors {
            self.cfg.connectors = new.connectors;
            self.start_connectors();
            tracing::info!(
                connectors = self.connector_tasks.len(),
                "connectors restarted"
            );
        }
        self.cfg.discovery.history_hours = new.discovery.history_hours;
        self.apply_tags();
        Ok(needs_restart)
    }
}

fn restart_note(needs_restart: &[&str]) -> String {
    if needs_restart.is_empty() {
        String::new()
    } else {
        format!(
            "; changes to {} take effect after a restart",
            needs_restart.join(", ")
        )
    }
}
