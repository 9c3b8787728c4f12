//! Durable push subscriptions: the [`SubscriptionStore`] trait, its SQLite
//! implementation (table `push_subscriptions` in `<data_dir>/woodpecker.db`,
//! its own connection, WAL, `synchronous=FULL`), and the in-memory
//! [`Registry`] in front of it that `notify` reads without touching disk.
//!
//! Store calls block; the service runs them on the blocking pool. A
//! subscribe resolves only after its transaction has committed.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use rusqlite::{Connection, OptionalExtension as _, params};

use super::PushError;
use super::subscription::{StoredSubscription, Target, ValidSubscription};

/// Where subscriptions live. Every method blocks; each write is durable
/// when it returns.
pub trait SubscriptionStore: Send + Sync + 'static {
    /// Every stored subscription (start-up).
    fn load_all(&self) -> Result<Vec<StoredSubscription>, PushError>;
    /// A responder's subscriptions, newest first.
    fn of_responder(&self, sub: &str) -> Result<Vec<StoredSubscription>, PushError>;
    /// Stores `new` for `sub`, deduplicated by endpoint (a known endpoint
    /// gets the new keys and owner and keeps its id), then keeps only the
    /// `max_per_responder` most recently posted of `sub`'s subscriptions.
    fn upsert(
        &self,
        sub: &str,
        new: &ValidSubscription,
        now_ms: u64,
        max_per_responder: usize,
    ) -> Result<Upserted, PushError>;
    /// Deletes `sub`'s subscription with this endpoint; whether one existed.
    fn delete_endpoint(&self, sub: &str, endpoint: &str) -> Result<bool, PushError>;
    /// Deletes by id (only if owned by `sub`, when given); the owner if deleted.
    fn delete_id(&self, id: &str, sub: Option<&str>) -> Result<Option<String>, PushError>;
}

/// What an upsert did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upserted {
    pub id: String,
    /// A new endpoint (else a known one was refreshed).
    pub created: bool,
    /// The responder who owned the endpoint before, if it changed hands.
    pub previous_owner: Option<String>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS push_subscriptions (
    id TEXT PRIMARY KEY,
    sub TEXT NOT NULL,
    endpoint TEXT NOT NULL UNIQUE,
    p256dh TEXT NOT NULL,
    auth TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS push_subscriptions_by_sub ON push_subscriptions (sub, updated_at);
";

const COLUMNS: &str = "id, sub, endpoint, p256dh, auth, created_at, updated_at";

/// SQLite implementation on its own connection to the hub's database.
pub struct SqliteSubscriptions {
    conn: Mutex<Connection>,
}

impl SqliteSubscriptions {
    /// Opens (creating if needed) `<dir>/woodpecker.db` and the table.
    pub fn open(dir: &Path) -> Result<Self, PushError> {
        std::fs::create_dir_all(dir)?;
        let conn = Connection::open(dir.join("woodpecker.db"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "busy_timeout", 5000)?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }
}

fn row_to_sub(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredSubscription> {
    Ok(StoredSubscription {
        id: row.get(0)?,
        sub: row.get(1)?,
        endpoint: row.get(2)?,
        p256dh: row.get(3)?,
        auth: row.get(4)?,
        created_at: row.get::<_, i64>(5)?.max(0) as u64,
        updated_at: row.get::<_, i64>(6)?.max(0) as u64,
    })
}

fn new_id() -> String {
    format!("ps_{:016x}", rand::random::<u64>())
}

impl SubscriptionStore for SqliteSubscriptions {
    fn load_all(&self) -> Result<Vec<StoredSubscription>, PushError> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM push_subscriptions ORDER BY sub, updated_at DESC"
        ))?;
        let rows = stmt.query_map([], row_to_sub)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn of_responder(&self, sub: &str) -> Result<Vec<StoredSubscription>, PushError> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM push_subscriptions WHERE sub = ?1 ORDER BY updated_at DESC, rowid DESC"
        ))?;
        let rows = stmt.query_map([sub], row_to_sub)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn upsert(
        &self,
        sub: &str,
        new: &ValidSubscription,
        now_ms: u64,
        max_per_responder: usize,
    ) -> Result<Upserted, PushError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let now = now_ms as i64;
        let existing: Option<(String, String)> = tx
            .query_row(
                "SELECT id, sub FROM push_subscriptions WHERE endpoint = ?1",
                [&new.endpoint],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let outcome = match existing {
            Some((id, owner)) => {
                tx.execute(
                    "UPDATE push_subscriptions SET sub = ?1, p256dh = ?2, auth = ?3, updated_at = ?4 WHERE id = ?5",
                    params![sub, new.p256dh, new.auth, now, id],
                )?;
                Upserted {
                    id,
                    created: false,
                    previous_owner: (owner != sub).then_some(owner),
                }
            }
            None => {
                let id = new_id();
                tx.execute(
                    "INSERT INTO push_subscriptions (id, sub, endpoint, p256dh, auth, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                    params![id, sub, new.endpoint, new.p256dh, new.auth, now],
                )?;
                Upserted {
                    id,
                    created: true,
                    previous_owner: None,
                }
            }
        };
        let keep_others = max_per_responder.saturating_sub(1) as i64;
        tx.execute(
            "DELETE FROM push_subscriptions WHERE sub = ?1 AND id != ?2 AND id NOT IN (
                SELECT id FROM push_subscriptions WHERE sub = ?1 AND id != ?2
                ORDER BY updated_at DESC, rowid DESC LIMIT ?3)",
            params![sub, outcome.id, keep_others],
        )?;
        tx.commit()?;
        Ok(outcome)
    }

    fn delete_endpoint(&self, sub: &str, endpoint: &str) -> Result<bool, PushError> {
        let conn = self.conn.lock();
        let n = conn.execute(
            "DELETE FROM push_subscriptions WHERE sub = ?1 AND endpoint = ?2",
            params![sub, endpoint],
        )?;
        Ok(n > 0)
    }

    fn delete_id(&self, id: &str, sub: Option<&str>) -> Result<Option<String>, PushError> {
        let conn = self.conn.lock();
        let owner: Option<String> = conn
            .query_row(
                "SELECT sub FROM push_subscriptions WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()?;
        let Some(owner) = owner else { return Ok(None) };
        if sub.is_some_and(|s| s != owner) {
            return Ok(None);
        }
        conn.execute("DELETE FROM push_subscriptions WHERE id = ?1", [id])?;
        Ok(Some(owner))
    }
}

/// The store plus an in-memory index of every responder's devices, kept
/// equal to the store: each write reloads the responders it touched while
/// holding `write`, so concurrent writes cannot leave the index stale.
pub struct Registry {
    store: Arc<dyn SubscriptionStore>,
    index: RwLock<HashMap<Arc<str>, Vec<Arc<Target>>>>,
    write: Mutex<()>,
    max_per_responder: usize,
}

impl Registry {
    /// Loads every subscription into memory (blocking).
    pub fn load(
        store: Arc<dyn SubscriptionStore>,
        max_per_responder: usize,
    ) -> Result<Self, PushError> {
        let mut index: HashMap<Arc<str>, Vec<Arc<Target>>> = HashMap::new();
        for row in store.load_all()? {
            if let Some(t) = Target::from_stored(&row) {
                index.entry(t.sub.clone()).or_default().push(Arc::new(t));
            }
        }
        Ok(Self {
            store,
            index: RwLock::new(index),
            write: Mutex::new(()),
            max_per_responder: max_per_responder.max(1),
        })
    }

    /// Every device of these responders (memory only; never blocks on I/O).
    pub fn targets_of(&self, subs: &[Arc<str>]) -> Vec<Arc<Target>> {
        let index = self.index.read();
        subs.iter()
            .filter_map(|s| index.get(s))
            .flat_map(|v| v.iter().cloned())
            .collect()
    }

    /// How many devices `sub` has (memory only).
    pub fn count_of(&self, sub: &str) -> usize {
        self.index.read().get(sub).map_or(0, Vec::len)
    }

    /// How many subscriptions are known.
    pub fn total(&self) -> usize {
        self.index.read().values().map(Vec::len).sum()
    }

    fn reload(&self, sub: &str) -> Result<(), PushError> {
        let rows = self.store.of_responder(sub)?;
        let targets: Vec<Arc<Target>> = rows
            .iter()
            .filter_map(Target::from_stored)
            .map(Arc::new)
            .collect();
        let mut index = self.index.write();
        if targets.is_empty() {
            index.remove(sub);
        } else {
            index.insert(sub.into(), targets);
        }
        Ok(())
    }

    /// Stores a subscription (blocking; durable on return).
    pub fn subscribe(
        &self,
        sub: &str,
        new: &ValidSubscription,
        now_ms: u64,
    ) -> Result<Upserted, PushError> {
        let _w = self.write.lock();
        let done = self
            .store
            .upsert(sub, new, now_ms, self.max_per_responder)?;
        self.reload(sub)?;
        if let Some(prev) = &done.previous_owner {
            self.reload(prev)?;
        }
        Ok(done)
    }

    /// Deletes `sub`'s subscription for `endpoint` (blocking).
    pub fn unsubscribe_endpoint(&self, sub: &str, endpoint: &str) -> Result<bool, PushError> {
        let _w = self.write.lock();
        let done = self.store.delete_endpoint(sub, endpoint)?;
        if done {
            self.reload(sub)?;
        }
        Ok(done)
    }

    /// Deletes by id, only if owned by `sub` when given (blocking).
    pub fn unsubscribe_id(&self, id: &str, sub: Option<&str>) -> Result<bool, PushError> {
        let _w = self.write.lock();
        match self.store.delete_id(id, sub)? {
            Some(owner) => {
                self.reload(&owner)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// `sub`'s stored subscriptions (blocking).
    pub fn list(&self, sub: &str) -> Result<Vec<StoredSubscription>, PushError> {
        self.store.of_responder(sub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(endpoint: &str, auth: &str) -> ValidSubscription {
        use base64::Engine as _;
        use p256::elliptic_curve::sec1::ToEncodedPoint as _;
        let secret = p256::SecretKey::from_slice(&[3u8; 32]).expect("key");
        ValidSubscription {
            endpoint: endpoint.into(),
            p256dh: base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(secret.public_key().to_encoded_point(false).as_bytes()),
            auth: auth.into(),
        }
    }

    const AUTH: &str = "CQkJCQkJCQkJCQkJCQkJCQ";

    #[test]
    fn upsert_dedups_moves_and_caps() {
        let dir = tempfile::tempdir().expect("tmp");
        let store: Arc<dyn SubscriptionStore> =
            Arc::new(SqliteSubscriptions::open(dir.path()).expect("open"));
        let reg = Registry::load(store.clone(), 2).expect("load");
        let a = reg
            .subscribe("v-1", &valid("https://p.example/a", AUTH), 10)
            .expect("a");
        assert!(a.created);
        let again = reg
            .subscribe("v-1", &valid("https://p.example/a", AUTH), 11)
            .expect("a again");
        assert_eq!((again.id.as_str(), again.created), (a.id.as_str(), false));
        assert_eq!(reg.count_of("v-1"), 1);

        reg.subscribe("v-1", &valid("https://p.example/b", AUTH), 12)
            .expect("b");
        reg.subscribe("v-1", &valid("https://p.example/c", AUTH), 13)
            .expect("c");
        let endpoints: Vec<_> = reg
            .list("v-1")
            .expect("list")
            .into_iter()
            .map(|s| s.endpoint)
            .collect();
        assert_eq!(endpoints, ["https://p.example/c", "https://p.example/b"]);

        // The device changes hands.
        let moved = reg
            .subscribe("v-2", &valid("https://p.example/c", AUTH), 14)
            .expect("moved");
        assert_eq!(moved.previous_owner.as_deref(), Some("v-1"));
        assert_eq!(reg.count_of("v-1"), 1);
        assert_eq!(reg.count_of("v-2"), 1);

        assert!(
            !reg.unsubscribe_endpoint("v-1", "https://p.example/c")
                .expect("del")
        );
        assert!(
            reg.unsubscribe_endpoint("v-2", "https://p.example/c")
                .expect("del")
        );
        assert_eq!(reg.count_of("v-2"), 0);

        // Durable: a fresh registry on the same file sees the same.
        drop(reg);
        let store: Arc<dyn SubscriptionStore> =
            Arc::new(SqliteSubscriptions::open(dir.path()).expect("open"));
        let reg = Registry::load(store, 2).expect("load");
        assert_eq!(reg.total(), 1);
        let id = reg.list("v-1").expect("list")[0].id.clone();
        assert!(!reg.unsubscribe_id(&id, Some("v-2")).expect("del"));
        assert!(reg.unsubscribe_id(&id, None).expect("del"));
        assert_eq!(reg.total(), 0);
    }
}
