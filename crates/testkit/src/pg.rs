//! The PostgreSQL server tests use, and a fresh database per test.
//!
//! `TEST_PG_ADMIN_URL` names a role that may create databases; without it, the server on this
//! machine (127.0.0.1:5432, user postgres, trust auth, database `test`). A test that needs
//! PostgreSQL fails when it does not answer: a suite that skips would pass without testing.

use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::Executor;

/// The default admin URL: the local server with trust auth.
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The admin URL: `TEST_PG_ADMIN_URL`, else [`DEFAULT_ADMIN_URL`].
pub fn admin_url() -> String {
    std::env::var("TEST_PG_ADMIN_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_string())
}

/// (`user@` or `user:password@` or empty, `host:port`) of the admin URL.
pub fn parts() -> (String, String) {
    let admin = admin_url();
    let rest = admin.split_once("://").map_or(admin.as_str(), |(_, r)| r);
    let rest = rest.split(['/', '?']).next().unwrap_or(rest);
    match rest.rsplit_once('@') {
        Some((user, hp)) => (format!("{user}@"), hp.to_string()),
        None => (String::new(), rest.to_string()),
    }
}

/// The URL of database `name` on the admin URL's server, as the admin URL's role, with the
/// admin URL's scheme and query (TLS settings) kept.
pub fn url_for(name: &str) -> String {
    let admin = admin_url();
    let (scheme, rest) = admin
        .split_once("://")
        .unwrap_or(("postgres", admin.as_str()));
    let (location, query) = match rest.split_once('?') {
        Some((l, q)) => (l, Some(q)),
        None => (rest, None),
    };
    let authority = location.split('/').next().unwrap_or(location);
    match query {
        Some(q) => format!("{scheme}://{authority}/{name}?{q}"),
        None => format!("{scheme}://{authority}/{name}"),
    }
}

/// A database name nobody else uses: `prefix`, the process id, the time and a counter.
fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}_{:x}_{nanos:x}_{n}", std::process::id())
}

/// A fresh database, dropped (with its connections) when the value is.
#[derive(Debug)]
pub struct TestDb {
    name: String,
}

impl TestDb {
    /// `CREATE DATABASE <prefix>_<unique>`; panics, naming the variable, when PostgreSQL does
    /// not answer.
    pub async fn create(prefix: &str) -> TestDb {
        let name = unique_name(prefix);
        let admin = sqlx::PgPool::connect(&admin_url())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL must answer at TEST_PG_ADMIN_URL or {DEFAULT_ADMIN_URL} (trust \
                 auth); scripts/test starts a local one: {e}"
                )
            });
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .expect("CREATE DATABASE");
        admin.close().await;
        TestDb { name }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its URL, straight to the server.
    pub fn url(&self) -> String {
        url_for(&self.name)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop may run inside a runtime that is shutting down: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(pool) = sqlx::PgPool::connect(&admin_url()).await {
                    let _ = pool
                        .execute(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .await;
                    pool.close().await;
                }
            });
        })
        .join();
    }
}

/// A loopback port nothing listens on right now, for a listener a test configures by number.
///
/// Taken below the kernel's ephemeral range (32768 and up on Linux), and never the same twice
/// in one process: a port handed out by binding to port 0 could be handed to another socket
/// (an outgoing connection, another test's listener) before the server under test binds it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    // Each test binary starts at its own offset, so two binaries running at once rarely meet.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        20_000 + (std::process::id() % 1_000) as u16 * 10,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    loop {
        let mut port = NEXT.fetch_add(1, Ordering::Relaxed);
        if !(20_000..32_000).contains(&port) {
            NEXT.store(20_001, Ordering::Relaxed);
            port = 20_000;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_valid_identifiers() {
        let a = unique_name("t");
        let b = unique_name("t");
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    }

    #[test]
    fn urls_keep_the_admin_urls_role_server_and_query() {
        // The variable is read, not set: set_var is unsafe in a threaded test binary.
        let admin = admin_url();
        let u = url_for("x");
        assert!(u.contains("/x"), "{u}");
        let (user, hp) = parts();
        assert!(u.contains(&format!("{user}{hp}/x")), "{u} from {admin}");
    }

    #[tokio::test]
    async fn a_database_is_created_usable_and_dropped() {
        let db = TestDb::create("testkit").await;
        let name = db.name().to_string();
        let pool = sqlx::PgPool::connect(&db.url()).await.unwrap();
        let one: (i32,) = sqlx::query_as("SELECT 1").fetch_one(&pool).await.unwrap();
        assert_eq!(one.0, 1);
        pool.close().await;
        drop(db);
        let admin = sqlx::PgPool::connect(&admin_url()).await.unwrap();
        let left: (i64,) = sqlx::query_as("SELECT count(*) FROM pg_database WHERE datname = $1")
            .bind(&name)
            .fetch_one(&admin)
            .await
            .unwrap();
        assert_eq!(left.0, 0, "the database is dropped with the value");
    }
}
