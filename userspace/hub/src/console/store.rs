//! What the console keeps and reads in the hub's database: accounts (argon2id hashes), login
//! sessions (only a SHA-256 of the cookie's token is stored, so a copy of the database opens
//! no session), and the discovery views with a date range and a site.

use serde::Serialize;
use sqlx::Row;

use crate::db::{Db, DbError, clip, now};

/// What an account may do: `admin` changes things (tags, alert status); `read-only` looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Admin,
    ReadOnly,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::ReadOnly => "read-only",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "read-only" => Some(Role::ReadOnly),
            _ => None,
        }
    }
}

/// A logged-in session.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: String,
    pub role: Role,
    /// The token every form that changes something carries back.
    pub csrf: String,
}

/// An account as `tollgate-hub user list` shows it (never its hash).
#[derive(Debug, Clone, Serialize)]
pub struct UserRow {
    pub name: String,
    pub role: Role,
    pub created_at: i64,
}

/// One app's traffic over a date range.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AppTotal {
    pub app_id: String,
    pub bytes_up: i64,
    pub bytes_down: i64,
    pub flows: i64,
    pub blocked_flows: i64,
    pub users: i64,
}

/// One user's (or device's) use of one app over a date range.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UseRow {
    /// The user, or the app (in a user's view).
    pub key: String,
    pub bytes_up: i64,
    pub bytes_down: i64,
    pub flows: i64,
}

/// A range of discovery: since when, and optionally one site's gateways and one app.
#[derive(Debug, Clone, Default)]
pub struct Range {
    pub since: i64,
    pub site: Option<String>,
}

impl Range {
    /// The WHERE clause and its binds after `$1` (since): `($2 = site)`.
    fn clause(&self) -> &'static str {
        if self.site.is_some() {
            "interval_start >= $1 AND gateway_id IN (SELECT id FROM gateways WHERE site = $2)"
        } else {
            "interval_start >= $1"
        }
    }

    fn next(&self) -> usize {
        if self.site.is_some() { 3 } else { 2 }
    }
}

pub(crate) fn sha256_hex(s: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// 32 random bytes, hex.
pub fn random_token() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 32];
    // The system RNG does not fail on Linux once booted; a zero token would still be
    // unguessable to nobody, so refuse to go on rather than hand it out.
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("the system random number generator");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Db {
    /// Adds an account, or replaces its password and role.
    pub async fn console_user_put(
        &self,
        name: &str,
        role: Role,
        password_hash: &str,
    ) -> Result<(), DbError> {
        let _w = self.sqlite_write().await;
        sqlx::query(
            "INSERT INTO console_users (name, role, password_hash, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET role = excluded.role, password_hash = excluded.password_hash",
        )
        .bind(name.to_string())
        .bind(role.as_str())
        .bind(password_hash.to_string())
        .bind(now())
        .execute(&self.pool)
        .await?;
        // A changed password or role ends the account's sessions.
        sqlx::query("DELETE FROM console_sessions WHERE user_name = $1")
            .bind(name.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn console_user_remove(&self, name: &str) -> Result<bool, DbError> {
        let _w = self.sqlite_write().await;
        let n = sqlx::query("DELETE FROM console_users WHERE name = $1")
            .bind(name.to_string())
            .execute(&self.pool)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM console_sessions WHERE user_name = $1")
            .bind(name.to_string())
            .execute(&self.pool)
            .await?;
        // Its API tokens die with it, so that an account made again under the same name does
        // not inherit them.
        sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE user_name = $2 AND revoked_at IS NULL",
        )
        .bind(now())
        .bind(name.to_string())
        .execute(&self.pool)
        .await?;
        Ok(n > 0)
    }

    pub async fn console_users(&self) -> Result<Vec<UserRow>, DbError> {
        let rows = sqlx::query("SELECT name, role, created_at FROM console_users ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::new();
        for r in rows {
            let role: String = r.try_get(1)?;
            out.push(UserRow {
                name: r.try_get(0)?,
                role: Role::parse(&role).unwrap_or(Role::ReadOnly),
                created_at: r.try_get(2)?,
            });
        }
        Ok(out)
    }

    /// The account's role and password hash.
    pub async fn console_user(&self, name: &str) -> Result<Option<(Role, String)>, DbError> {
        let row = sqlx::query("SELECT role, password_hash FROM console_users WHERE name = $1")
            .bind(name.to_string())
            .fetch_optional(&self.pool)
            .await?;
        let Some(r) = row else { return Ok(None) };
        let role: String = r.try_get(0)?;
        Ok(Some((
            Role::parse(&role).unwrap_or(Role::ReadOnly),
            r.try_get(1)?,
        )))
    }

    /// A new session for `user`; returns the cookie's token (only its hash is stored).
    pub async fn console_session_start(
        &self,
        user: &str,
        role: Role,
        ttl_secs: i64,
    ) -> Result<(String, Session), DbError> {
        let token = random_token();
        let csrf = random_token();
        let _w = self.sqlite_write().await;
        sqlx::query("DELETE FROM console_sessions WHERE expires_at < $1")
            .bind(now())
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO console_sessions (token_hash, user_name, role, csrf, expires_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(sha256_hex(&token))
        .bind(user.to_string())
        .bind(role.as_str())
        .bind(csrf.clone())
        .bind(now() + ttl_secs)
        .execute(&self.pool)
        .await?;
        Ok((
            token,
            Session {
                user: user.to_string(),
                role,
                csrf,
            },
        ))
    }

    pub async fn console_session(&self, token: &str) -> Result<Option<Session>, DbError> {
        if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let row = sqlx::query(
            "SELECT user_name, role, csrf FROM console_sessions WHERE token_hash = $1 AND expires_at >= $2",
        )
        .bind(sha256_hex(token))
        .bind(now())
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let role: String = r.try_get(1)?;
        Ok(Some(Session {
            user: r.try_get(0)?,
            role: Role::parse(&role).unwrap_or(Role::ReadOnly),
            csrf: r.try_get(2)?,
        }))
    }

    pub async fn console_session_end(&self, token: &str) -> Result<(), DbError> {
        let _w = self.sqlite_write().await;
        sqlx::query("DELETE FROM console_sessions WHERE token_hash = $1")
            .bind(sha256_hex(token))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Per app over the range, by traffic.
    pub async fn discovery_totals(&self, range: &Range) -> Result<Vec<AppTotal>, DbError> {
        let sql = format!(
            "SELECT app_id, CAST(SUM(bytes_up) AS BIGINT), CAST(SUM(bytes_down) AS BIGINT), \
             CAST(SUM(flows) AS BIGINT), CAST(SUM(blocked_flows) AS BIGINT), COUNT(DISTINCT user_name) \
             FROM discovery WHERE {} GROUP BY app_id",
            range.clause()
        );
        let mut q = sqlx::query(&sql).bind(range.since);
        if let Some(s) = &range.site {
            q = q.bind(s.clone());
        }
        let mut out = Vec::new();
        for r in q.fetch_all(&self.pool).await? {
            out.push(AppTotal {
                app_id: r.try_get(0)?,
                bytes_up: r.try_get(1)?,
                bytes_down: r.try_get(2)?,
                flows: r.try_get(3)?,
                blocked_flows: r.try_get(4)?,
                users: r.try_get(5)?,
            });
        }
        out.sort_by(|a, b| {
            (b.bytes_up + b.bytes_down)
                .cmp(&(a.bytes_up + a.bytes_down))
                .then_with(|| a.app_id.cmp(&b.app_id))
        });
        Ok(out)
    }

    /// Bytes per hour over the range (of one app, or all): (hour start, up, down).
    pub async fn traffic_by_hour(
        &self,
        range: &Range,
        app: Option<&str>,
    ) -> Result<Vec<(i64, i64, i64)>, DbError> {
        let app_clause = if app.is_some() {
            format!(" AND app_id = ${}", range.next())
        } else {
            String::new()
        };
        let sql = format!(
            "SELECT (interval_start / 3600) * 3600 AS hour, CAST(SUM(bytes_up) AS BIGINT), \
             CAST(SUM(bytes_down) AS BIGINT) FROM discovery WHERE {}{app_clause} \
             GROUP BY (interval_start / 3600) * 3600 ORDER BY 1",
            range.clause()
        );
        let mut q = sqlx::query(&sql).bind(range.since);
        if let Some(s) = &range.site {
            q = q.bind(s.clone());
        }
        if let Some(a) = app {
            q = q.bind(a.to_string());
        }
        let mut out = Vec::new();
        for r in q.fetch_all(&self.pool).await? {
            out.push((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?));
        }
        Ok(out)
    }

    /// One app's users, or one user's apps, over the range, by traffic (at most 500).
    pub async fn discovery_drill(
        &self,
        range: &Range,
        app: Option<&str>,
        user: Option<&str>,
    ) -> Result<Vec<UseRow>, DbError> {
        let (key, filter, value) = match (app, user) {
            (Some(a), _) => ("user_name", "app_id", a),
            (None, Some(u)) => ("app_id", "user_name", u),
            (None, None) => return Ok(Vec::new()),
        };
        let sql = format!(
            "SELECT {key}, CAST(SUM(bytes_up) AS BIGINT), CAST(SUM(bytes_down) AS BIGINT), \
             CAST(SUM(flows) AS BIGINT) FROM discovery WHERE {} AND {filter} = ${} \
             GROUP BY {key} ORDER BY 2 DESC LIMIT 500",
            range.clause(),
            range.next()
        );
        let mut q = sqlx::query(&sql).bind(range.since);
        if let Some(s) = &range.site {
            q = q.bind(s.clone());
        }
        q = q.bind(clip(value, 255));
        let mut out = Vec::new();
        for r in q.fetch_all(&self.pool).await? {
            out.push(UseRow {
                key: r.try_get(0)?,
                bytes_up: r.try_get(1)?,
                bytes_down: r.try_get(2)?,
                flows: r.try_get(3)?,
            });
        }
        Ok(out)
    }

    /// The sites gateways are enrolled in.
    pub async fn sites(&self) -> Result<Vec<String>, DbError> {
        let rows = sqlx::query("SELECT DISTINCT site FROM gateways ORDER BY site")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>(0).map_err(DbError::from))
            .collect()
    }

    /// The policy of the newest bundle for every site (`None`: none published yet).
    pub async fn latest_every_site_policy(&self) -> Result<Option<(i64, String)>, DbError> {
        let row = sqlx::query(
            "SELECT revision, policy_toml FROM bundles WHERE site IS NULL ORDER BY revision DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => Ok(Some((r.try_get(0)?, r.try_get(1)?))),
            None => Ok(None),
        }
    }
}
