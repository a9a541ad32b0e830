//! The PostgreSQL server the tests use, and a fresh database per test.

use sqlx::Executor;

/// A PostgreSQL role that may create databases: `TEST_PG_ADMIN_URL`, else the server on this
/// machine (127.0.0.1:5432, user postgres, trust auth).
pub fn pg_admin() -> String {
    std::env::var("TEST_PG_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// (`user@` or `user:password@`, `host:port`) of the admin URL.
pub fn pg_parts() -> (String, String) {
    let admin = pg_admin();
    let rest = admin.split_once("://").map_or(admin.as_str(), |(_, r)| r);
    let rest = rest.split('/').next().unwrap_or(rest);
    match rest.rsplit_once('@') {
        Some((user, hp)) => (format!("{user}@"), hp.to_string()),
        None => (String::new(), rest.to_string()),
    }
}

/// A fresh database, dropped with the value.
pub struct Db {
    pub name: String,
}

impl Db {
    /// `CREATE DATABASE <prefix>_<random>`.
    pub async fn create(prefix: &str) -> Db {
        let name = format!(
            "{prefix}_{}",
            mayfly_crypto::hex(&mayfly_crypto::random_bytes(6).unwrap())
        );
        let admin = sqlx::PgPool::connect(&pg_admin()).await.expect(
            "PostgreSQL must answer at TEST_PG_ADMIN_URL or 127.0.0.1:5432 (user postgres, trust auth)",
        );
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .unwrap();
        admin.close().await;
        Db { name }
    }

    /// Its URL, straight to the server.
    pub fn url(&self) -> String {
        let (user, hp) = pg_parts();
        format!("postgres://{user}{hp}/{}", self.name)
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(pool) = sqlx::PgPool::connect(&pg_admin()).await {
                    let _ = pool
                        .execute(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .await;
                }
            });
        })
        .join();
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
