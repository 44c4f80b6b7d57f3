//! API tokens for scripts (`tollgate-hub api-token create|list|revoke`): each belongs to a
//! console account and acts on the admin API (`/v1/admin/*`) with that account's role at the
//! time of use (`admin`: everything; `read-only`: GET only).
//!
//! The secret is `tgh_` and 32 random bytes in hex, printed once by `create`; the database
//! keeps only its SHA-256 (a copy of the database authenticates nobody), the label, the
//! account, and when it was made, expires, was last used and was revoked. A token is looked up
//! by that hash, so checking one compares no secret byte by byte. An unknown, expired or
//! revoked token, or one whose account was removed, gets the same refusal. Tokens are not
//! console sessions: the console reads only its own cookie, whose token is another table's.

use serde::Serialize;
use sqlx::Row;

use super::store::{Role, random_token, sha256_hex};
use crate::db::{Db, DbError, now};

/// What every API token starts with (so a leaked one is recognisable in logs and scanners).
pub const PREFIX: &str = "tgh_";
/// The longest label.
pub const MAX_LABEL: usize = 64;
/// The longest life `--expires-days` gives (about ten years).
pub const MAX_EXPIRES_DAYS: i64 = 3650;
/// `last_used` is written at most this often per token: a script polling every second
/// costs one write a minute, not one per request.
pub const LAST_USED_EVERY_SECS: i64 = 60;

/// A token as `tollgate-hub api-token list` shows it (never the secret nor its hash).
#[derive(Debug, Clone, Serialize)]
pub struct TokenRow {
    pub id: i64,
    pub user: String,
    pub label: String,
    /// The account's role now (`None`: the account is gone, the token works no more).
    pub role: Option<Role>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used: Option<i64>,
    pub revoked_at: Option<i64>,
    /// `active`, `expired`, `revoked` or `no-account`.
    pub state: &'static str,
}

/// Who a presented token acts as.
#[derive(Debug, Clone)]
pub struct TokenAuth {
    pub id: i64,
    pub user: String,
    pub role: Role,
}

/// A new secret: `tgh_` and 64 hex digits.
pub fn generate() -> String {
    format!("{PREFIX}{}", random_token())
}

/// Whether `token` has the form of one we issue (anything else is refused without a query).
pub fn well_formed(token: &str) -> bool {
    token.strip_prefix(PREFIX).is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// A label is at most [`MAX_LABEL`] characters and has no control characters (it is printed
/// on a terminal and written to the audit trail).
pub fn valid_label(label: &str) -> bool {
    label.chars().count() <= MAX_LABEL && !label.chars().any(char::is_control)
}

impl Db {
    /// Makes a token for `user`; returns its id and secret, or `None` when there is no such
    /// account. The creation is an audit record (without the secret).
    pub async fn api_token_create(
        &self,
        user: &str,
        label: &str,
        expires_at: Option<i64>,
    ) -> Result<Option<(i64, String)>, DbError> {
        if self.console_user(user).await?.is_none() {
            return Ok(None);
        }
        let secret = generate();
        let id: i64 = {
            let _w = self.sqlite_write().await;
            sqlx::query(
                "INSERT INTO api_tokens (token_hash, user_name, label, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5) RETURNING id",
            )
            .bind(sha256_hex(&secret))
            .bind(user.to_string())
            .bind(label.to_string())
            .bind(now())
            .bind(expires_at)
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?
        };
        let until = expires_at.map_or_else(
            || "never expires".to_string(),
            |e| format!("expires at {e}"),
        );
        self.audit_hub(
            "api_token_created",
            None,
            &format!("API token {id} ({label:?}) for account {user}, {until}"),
        )
        .await?;
        Ok(Some((id, secret)))
    }

    /// Revokes token `id`; `false` when there is no such token or it was revoked already.
    pub async fn api_token_revoke(&self, id: i64) -> Result<bool, DbError> {
        let n = {
            let _w = self.sqlite_write().await;
            sqlx::query(
                "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
            )
            .bind(now())
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected()
        };
        if n > 0 {
            self.audit_hub(
                "api_token_revoked",
                None,
                &format!("API token {id} revoked"),
            )
            .await?;
        }
        Ok(n > 0)
    }

    /// Every token, newest first.
    pub async fn api_tokens(&self) -> Result<Vec<TokenRow>, DbError> {
        let rows = sqlx::query(
            "SELECT t.id, t.user_name, t.label, u.role, t.created_at, t.expires_at, t.last_used, \
             t.revoked_at FROM api_tokens t LEFT JOIN console_users u ON u.name = t.user_name \
             ORDER BY t.id DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        let now = now();
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let role: Option<String> = r.try_get(3)?;
            let role = role.map(|r| Role::parse(&r).unwrap_or(Role::ReadOnly));
            let expires_at: Option<i64> = r.try_get(5)?;
            let revoked_at: Option<i64> = r.try_get(7)?;
            let state = if revoked_at.is_some() {
                "revoked"
            } else if expires_at.is_some_and(|e| e <= now) {
                "expired"
            } else if role.is_none() {
                "no-account"
            } else {
                "active"
            };
            out.push(TokenRow {
                id: r.try_get(0)?,
                user: r.try_get(1)?,
                label: r.try_get(2)?,
                role,
                created_at: r.try_get(4)?,
                expires_at,
                last_used: r.try_get(6)?,
                revoked_at,
                state,
            });
        }
        Ok(out)
    }

    /// Who `token` acts as, if it is a live token of an existing account; notes its use
    /// (at most once every [`LAST_USED_EVERY_SECS`]).
    pub async fn api_token_auth(&self, token: &str) -> Result<Option<TokenAuth>, DbError> {
        if !well_formed(token) {
            return Ok(None);
        }
        let now = now();
        let row = sqlx::query(
            "SELECT t.id, t.user_name, u.role, t.last_used FROM api_tokens t \
             JOIN console_users u ON u.name = t.user_name \
             WHERE t.token_hash = $1 AND t.revoked_at IS NULL \
             AND (t.expires_at IS NULL OR t.expires_at > $2)",
        )
        .bind(sha256_hex(token))
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let id: i64 = r.try_get(0)?;
        let role: String = r.try_get(2)?;
        let last_used: Option<i64> = r.try_get(3)?;
        if last_used.is_none_or(|t| now - t >= LAST_USED_EVERY_SECS) {
            let _w = self.sqlite_write().await;
            // Best effort: a failed note of use does not refuse the request.
            if let Err(e) = sqlx::query("UPDATE api_tokens SET last_used = $1 WHERE id = $2")
                .bind(now)
                .bind(id)
                .execute(&self.pool)
                .await
            {
                tracing::warn!(error = %e, token = id, "cannot note an API token's use");
            }
        }
        Ok(Some(TokenAuth {
            id,
            user: r.try_get(1)?,
            role: Role::parse(&role).unwrap_or(Role::ReadOnly),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_and_labels() {
        let t = generate();
        assert!(well_formed(&t), "{t}");
        assert_eq!(t.len(), 4 + 64);
        assert_ne!(generate(), t);
        for bad in [
            "",
            "tgh_",
            &t[4..],
            &t[..t.len() - 1],
            &format!("{t}0"),
            &t.to_uppercase(),
            &format!("tgh_{}", "g".repeat(64)),
            &format!("tgh_{}", "é".repeat(32)),
        ] {
            assert!(!well_formed(bad), "{bad}");
        }
        assert!(valid_label("ci deploy"));
        assert!(valid_label(""));
        assert!(!valid_label("a\nb"));
        assert!(!valid_label(&"x".repeat(MAX_LABEL + 1)));
    }
}
