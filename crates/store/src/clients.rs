//! Clients registered at run time (`mayfly client add`), beside those in the config file.

use sqlx::Row;

use crate::{Store, StoreError, db};

/// A client as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredClient {
    /// client_id.
    pub id: String,
    /// Its public JWK Set (JSON text).
    pub jwks: String,
    /// Audiences it may request.
    pub audiences: Vec<String>,
    /// Scopes it may request.
    pub scopes: Vec<String>,
    /// Lifetime cap in seconds.
    pub max_ttl: Option<i64>,
    /// When it was added.
    pub created_at: i64,
}

fn list(text: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("client list column: {e}")))
}

impl Store {
    /// All run-time clients.
    pub async fn list_clients(&self) -> Result<Vec<StoredClient>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, jwks, audiences, scopes, max_ttl, created_at FROM clients ORDER BY id",
        )
        .fetch_all(self.pool())
        .await
        .map_err(db("list clients"))?;
        rows.iter()
            .map(|r| {
                Ok(StoredClient {
                    id: r.try_get("id").map_err(db("read client"))?,
                    jwks: r.try_get("jwks").map_err(db("read client"))?,
                    audiences: list(
                        &r.try_get::<String, _>("audiences")
                            .map_err(db("read client"))?,
                    )?,
                    scopes: list(
                        &r.try_get::<String, _>("scopes")
                            .map_err(db("read client"))?,
                    )?,
                    max_ttl: r.try_get("max_ttl").map_err(db("read client"))?,
                    created_at: r.try_get("created_at").map_err(db("read client"))?,
                })
            })
            .collect()
    }

    /// Add a client; `false` if the id is taken.
    pub async fn add_client(&self, c: &StoredClient) -> Result<bool, StoreError> {
        let audiences =
            serde_json::to_string(&c.audiences).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let scopes =
            serde_json::to_string(&c.scopes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let r = sqlx::query("INSERT INTO clients (id, jwks, audiences, scopes, max_ttl, created_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING")
            .bind(&c.id).bind(&c.jwks).bind(audiences).bind(scopes).bind(c.max_ttl).bind(c.created_at)
            .execute(self.pool()).await.map_err(db("add client"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Remove a client; `false` if there was none.
    pub async fn remove_client(&self, id: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM clients WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await
            .map_err(db("remove client"))?;
        Ok(r.rows_affected() == 1)
    }
}
