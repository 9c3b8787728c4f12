//! The embedded store: SQLite (bundled, WAL, `synchronous=FULL`).
//!
//! One writer thread owns the write connection. It takes every commit that
//! is waiting, applies them all in one transaction, commits (one fsync of
//! the WAL), then answers each caller: group commit, so thousands of acks a
//! second share a handful of fsyncs. Reads use a second connection, which
//! WAL lets run beside the writer.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;

use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use super::{
    EventFilter, Scope, Snapshot, Store, StoreError, StoreFuture, StoredEvent, TargetRecord, Write,
};
use crate::domain::{AckState, AlertId, Unit};
use crate::hub::Frame;
use crate::protocol::{AckRecord, Alert};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, issued_at INTEGER NOT NULL, json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS target_sets (
    id INTEGER PRIMARY KEY, alert_id TEXT NOT NULL, first_seq INTEGER NOT NULL,
    targets TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY, alert_id TEXT NOT NULL, scope TEXT NOT NULL, only_sub TEXT,
    staff INTEGER NOT NULL, at INTEGER NOT NULL, frame TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_alert ON events (alert_id, seq);
CREATE TABLE IF NOT EXISTS acks (
    id INTEGER PRIMARY KEY, alert_id TEXT NOT NULL, sub TEXT NOT NULL,
    name TEXT NOT NULL, unit TEXT NOT NULL, state TEXT NOT NULL, at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS acks_by_alert ON acks (alert_id, id);
CREATE TABLE IF NOT EXISTS grid_cells (
    alert_id TEXT NOT NULL, cell TEXT NOT NULL, json TEXT NOT NULL,
    PRIMARY KEY (alert_id, cell)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS grid_history (
    id INTEGER PRIMARY KEY, alert_id TEXT NOT NULL, cell TEXT NOT NULL,
    at INTEGER NOT NULL, json TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS grid_history_by_alert ON grid_history (alert_id, id);
CREATE TABLE IF NOT EXISTS places (
    sub TEXT PRIMARY KEY, unit TEXT NOT NULL, cell INTEGER NOT NULL, at INTEGER NOT NULL) WITHOUT ROWID;
";

struct Job {
    writes: Vec<Write>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

pub struct SqliteStore {
    jobs: Mutex<Option<std_mpsc::Sender<Job>>>,
    reader: Arc<Mutex<Connection>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn open(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "busy_timeout", 5000)?;
    // 32 MiB of page cache: a burst of alerts and acks stays in memory.
    conn.pragma_update(None, "cache_size", -32_768)?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) `<dir>/woodpecker.db`.
    pub fn open(dir: &Path, max_batch: usize) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("woodpecker.db");
        let writer_conn = open(&path)?;
        writer_conn.execute_batch(SCHEMA)?;
        let reader = open(&path)?;
        let (tx, rx) = std_mpsc::channel::<Job>();
        let handle = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(writer_conn, rx, max_batch.max(1)))?;
        Ok(Self {
            jobs: Mutex::new(Some(tx)),
            reader: Arc::new(Mutex::new(reader)),
            writer: Mutex::new(Some(handle)),
        })
    }

    /// Stops taking writes and waits for the writer to finish what it has.
    pub fn close(&self) {
        self.jobs.lock().take();
        if let Some(h) = self.writer.lock().take() {
            let _ = h.join();
        }
    }

    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> StoreFuture<T> {
        let reader = self.reader.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(&reader.lock()))
                .await
                .map_err(|_| StoreError::Closed)?
        })
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.close();
    }
}

fn writer_loop(mut conn: Connection, rx: std_mpsc::Receiver<Job>, max_batch: usize) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        let mut writes = batch[0].writes.len();
        while writes < max_batch {
            match rx.try_recv() {
                Ok(job) => {
                    writes += job.writes.len();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        let result = apply_batch(&mut conn, &batch);
        for job in batch {
            let reply = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(StoreError::Corrupt(format!("commit failed: {e}"))),
            };
            let _ = job.done.send(reply);
        }
        if let Err(e) = result {
            tracing::error!(error = %e, "store commit failed; batch rolled back");
        }
    }
}

fn scope_parts(scope: &Scope) -> (&'static str, Option<&str>) {
    match scope {
        Scope::Targets => ("targets", None),
        Scope::NewTargets => ("new", None),
        Scope::One(sub) => ("one", Some(sub)),
    }
}

fn apply_batch(conn: &mut Connection, batch: &[Job]) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    {
        let mut put_alert = tx.prepare_cached(
            "INSERT OR REPLACE INTO alerts (id, status, issued_at, json) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut put_targets = tx.prepare_cached(
            "INSERT INTO target_sets (alert_id, first_seq, targets) VALUES (?1, ?2, ?3)",
        )?;
        let mut put_event = tx.prepare_cached(
            "INSERT INTO events (seq, alert_id, scope, only_sub, staff, at, frame) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        let mut put_ack = tx.prepare_cached(
            "INSERT INTO acks (alert_id, sub, name, unit, state, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut put_place = tx.prepare_cached(
            "INSERT OR REPLACE INTO places (sub, unit, cell, at) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut clear_place = tx.prepare_cached("DELETE FROM places WHERE sub = ?1")?;
        let mut put_cell = tx.prepare_cached(
            "INSERT OR REPLACE INTO grid_cells (alert_id, cell, json) VALUES (?1, ?2, ?3)",
        )?;
        let mut log_cell = tx.prepare_cached(
            "INSERT INTO grid_history (alert_id, cell, at, json) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for job in batch {
            for w in &job.writes {
                match w {
                    Write::Alert(a) => {
                        let json = serde_json::to_string(a)
                            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                        put_alert.execute(params![
                            a.id.as_str(),
                            a.status.as_str(),
                            a.issued_at as i64,
                            json
                        ])?;
                    }
                    Write::Targets {
                        alert,
                        first_seq,
                        targets,
                    } => {
                        // One row per targeting event, however many targets:
                        // the fan-out waits on this commit.
                        let list: Vec<(&str, &str)> =
                            targets.iter().map(|t| (t.unit.as_str(), &*t.sub)).collect();
                        let json = serde_json::to_string(&list)
                            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                        put_targets.execute(params![alert.as_str(), *first_seq as i64, json])?;
                    }
                    Write::Event(e) => {
                        let (scope, only) = scope_parts(&e.scope);
                        let frame = std::str::from_utf8(&e.frame)
                            .map_err(|_| StoreError::Corrupt("frame is not UTF-8".into()))?;
                        put_event.execute(params![
                            e.seq as i64,
                            e.alert.as_str(),
                            scope,
                            only,
                            e.staff,
                            e.at_ms as i64,
                            frame
                        ])?;
                    }
                    Write::Ack(r) => {
                        put_ack.execute(params![
                            r.alert.as_str(),
                            r.responder,
                            r.name,
                            r.unit.as_str(),
                            r.state.as_str(),
                            r.at as i64
                        ])?;
                    }
                    Write::GridCells { alert, records } => {
                        for r in records {
                            let json = serde_json::to_string(r)
                                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                            let cell = r.cell.to_string();
                            put_cell.execute(params![alert.as_str(), cell, json])?;
                            log_cell.execute(params![
                                alert.as_str(),
                                cell,
                                r.changed_at as i64,
                                json
                            ])?;
                        }
                    }
                    Write::ClearPlace { sub } => {
                        clear_place.execute(params![&**sub])?;
                    }
                    Write::Place {
                        sub,
                        unit,
                        cell,
                        at_ms,
                    } => {
                        put_place.execute(params![
                            &**sub,
                            unit.as_str(),
                            *cell as i64,
                            *at_ms as i64
                        ])?;
                    }
                }
            }
        }
    }
    tx.commit()?;
    Ok(())
}

fn unit_of(s: &str) -> Result<Unit, StoreError> {
    s.parse()
        .map_err(|_| StoreError::Corrupt(format!("unit '{s}'")))
}

fn ack_state_of(s: &str) -> Result<AckState, StoreError> {
    AckState::parse(s).ok_or_else(|| StoreError::Corrupt(format!("ack state '{s}'")))
}

fn alert_id_of(s: &str) -> Result<AlertId, StoreError> {
    AlertId::parse(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn load_snapshot(conn: &Connection) -> Result<Snapshot, StoreError> {
    let mut snap = Snapshot::default();
    let mut stmt = conn.prepare("SELECT json FROM alerts ORDER BY issued_at")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    for json in rows {
        let alert: Alert =
            serde_json::from_str(&json?).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        snap.alerts.push(alert);
    }
    let mut stmt =
        conn.prepare("SELECT alert_id, first_seq, targets FROM target_sets ORDER BY id")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let alert = alert_id_of(&r.get::<_, String>(0)?)?;
        let first = r.get::<_, i64>(1)? as u64;
        let list: Vec<(String, String)> = serde_json::from_str(&r.get::<_, String>(2)?)
            .map_err(|e| StoreError::Corrupt(format!("target set: {e}")))?;
        for (unit, sub) in list {
            let target = TargetRecord {
                sub: sub.into(),
                unit: unit_of(&unit)?,
            };
            snap.targets.push((alert.clone(), target, first));
        }
    }
    // The latest ack per responder, folded from the history in order.
    let mut latest: std::collections::HashMap<(String, String), AckRecord> = Default::default();
    let mut stmt =
        conn.prepare("SELECT alert_id, sub, name, unit, state, at FROM acks ORDER BY id")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let rec = AckRecord {
            alert: alert_id_of(&r.get::<_, String>(0)?)?,
            responder: r.get(1)?,
            name: r.get(2)?,
            unit: unit_of(&r.get::<_, String>(3)?)?,
            state: ack_state_of(&r.get::<_, String>(4)?)?,
            at: r.get::<_, i64>(5)? as u64,
        };
        let key = (rec.alert.as_str().to_string(), rec.responder.clone());
        let merged = AckState::merge(latest.get(&key).map(|l| l.state), rec.state);
        latest.insert(
            key,
            AckRecord {
                state: merged,
                ..rec
            },
        );
    }
    snap.acks = latest.into_values().collect();
    let mut stmt = conn.prepare("SELECT sub, unit, cell, at FROM places")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let sub: String = r.get(0)?;
        snap.places.push((
            sub.into(),
            unit_of(&r.get::<_, String>(1)?)?,
            r.get::<_, i64>(2)? as u64,
            r.get::<_, i64>(3)? as u64,
        ));
    }
    let mut stmt = conn.prepare("SELECT alert_id, json FROM grid_cells")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let alert = alert_id_of(&r.get::<_, String>(0)?)?;
        let record = serde_json::from_str(&r.get::<_, String>(1)?)
            .map_err(|e| StoreError::Corrupt(format!("grid cell: {e}")))?;
        snap.grid.push((alert, record));
    }
    snap.last_seq = conn
        .query_row("SELECT MAX(seq) FROM events", [], |r| {
            r.get::<_, Option<i64>>(0)
        })
        .optional()?
        .flatten()
        .unwrap_or(0) as u64;
    Ok(snap)
}

impl Store for SqliteStore {
    fn commit(&self, writes: Vec<Write>) -> StoreFuture<()> {
        let (done, wait) = oneshot::channel();
        let sent = match self.jobs.lock().as_ref() {
            Some(tx) => tx.send(Job { writes, done }).is_ok(),
            None => false,
        };
        Box::pin(async move {
            if !sent {
                return Err(StoreError::Closed);
            }
            wait.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn load(&self) -> StoreFuture<Snapshot> {
        self.read(load_snapshot)
    }

    fn events_since(
        &self,
        since: u64,
        filter: EventFilter,
        limit: usize,
    ) -> StoreFuture<Vec<StoredEvent>> {
        self.read(move |conn| {
            let since = since.min(i64::MAX as u64) as i64;
            let limit = limit.min(i64::MAX as usize) as i64;
            let mut out = Vec::new();
            let mut read = |sql: &str, alert: Option<&AlertId>| -> Result<(), StoreError> {
                let mut stmt = conn.prepare_cached(sql)?;
                let mut rows = match alert {
                    Some(a) => stmt.query(params![since, limit, a.as_str()])?,
                    None => stmt.query(params![since, limit])?,
                };
                while let Some(r) = rows.next()? {
                    let scope = match (
                        r.get::<_, String>(2)?.as_str(),
                        r.get::<_, Option<String>>(3)?,
                    ) {
                        ("targets", _) => Scope::Targets,
                        ("new", _) => Scope::NewTargets,
                        ("one", Some(sub)) => Scope::One(sub.into()),
                        (other, _) => {
                            return Err(StoreError::Corrupt(format!("event scope '{other}'")));
                        }
                    };
                    out.push(StoredEvent {
                        seq: r.get::<_, i64>(0)? as u64,
                        alert: alert_id_of(&r.get::<_, String>(1)?)?,
                        scope,
                        frame: Frame::from(r.get::<_, String>(4)?),
                    });
                }
                Ok(())
            };
            match filter {
                EventFilter::Staff => read(
                    "SELECT seq, alert_id, scope, only_sub, frame FROM events
                      WHERE seq > ?1 AND staff = 1 ORDER BY seq LIMIT ?2",
                    None,
                )?,
                EventFilter::Alerts(alerts) => {
                    for a in &alerts {
                        read(
                            "SELECT seq, alert_id, scope, only_sub, frame FROM events
                              WHERE seq > ?1 AND alert_id = ?3 ORDER BY seq LIMIT ?2",
                            Some(a),
                        )?;
                    }
                    out.sort_by_key(|e| e.seq);
                    out.truncate(limit as usize);
                }
            }
            Ok(out)
        })
    }

    fn ack_history(&self, alert: AlertId) -> StoreFuture<Vec<AckRecord>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT sub, name, unit, state, at FROM acks WHERE alert_id = ?1 ORDER BY id",
            )?;
            let mut rows = stmt.query(params![alert.as_str()])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(AckRecord {
                    alert: alert.clone(),
                    responder: r.get(0)?,
                    name: r.get(1)?,
                    unit: unit_of(&r.get::<_, String>(2)?)?,
                    state: ack_state_of(&r.get::<_, String>(3)?)?,
                    at: r.get::<_, i64>(4)? as u64,
                });
            }
            Ok(out)
        })
    }

    fn grid_history(&self, alert: AlertId) -> StoreFuture<Vec<crate::grid::CellRecord>> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT json FROM grid_history WHERE alert_id = ?1 ORDER BY id")?;
            let rows = stmt
                .query_map(params![alert.as_str()], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            rows.iter()
                .map(|j| {
                    serde_json::from_str(j)
                        .map_err(|e| StoreError::Corrupt(format!("grid history: {e}")))
                })
                .collect()
        })
    }

    fn alert_events(&self, alert: AlertId) -> StoreFuture<Vec<(u64, u64, Frame)>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, at, frame FROM events WHERE alert_id = ?1 AND staff = 1 ORDER BY seq",
            )?;
            let rows = stmt
                .query_map(params![alert.as_str()], |r| {
                    Ok((
                        r.get::<_, i64>(0)? as u64,
                        r.get::<_, i64>(1)? as u64,
                        r.get::<_, String>(2)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows
                .into_iter()
                .map(|(s, at, f)| (s, at, Frame::from(f)))
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EventRecord;

    fn ack(alert: &AlertId, sub: &str, state: AckState) -> Write {
        Write::Ack(AckRecord {
            alert: alert.clone(),
            responder: sub.into(),
            name: String::new(),
            unit: Unit::Volunteer,
            state,
            at: 1,
        })
    }

    #[tokio::test]
    async fn concurrent_commits_are_all_durable_after_reopen() {
        let dir = tempfile::tempdir().expect("tmp");
        let alert = AlertId::parse("al_1").expect("id");
        {
            let store = Arc::new(SqliteStore::open(dir.path(), 512).expect("open"));
            let mut tasks = Vec::new();
            for i in 0..500 {
                let store = store.clone();
                let alert = alert.clone();
                tasks.push(tokio::spawn(async move {
                    store
                        .commit(vec![ack(&alert, &format!("r{i}"), AckState::Accepted)])
                        .await
                }));
            }
            for t in tasks {
                t.await.expect("join").expect("commit");
            }
            // A late delivery receipt does not undo the decision on reload.
            store
                .commit(vec![ack(&alert, "r0", AckState::Received)])
                .await
                .expect("commit");
            store.close();
        }
        let store = SqliteStore::open(dir.path(), 512).expect("reopen");
        let snap = store.load().await.expect("load");
        assert_eq!(snap.acks.len(), 500);
        assert!(snap.acks.iter().all(|a| a.state == AckState::Accepted));
        assert_eq!(store.ack_history(alert).await.expect("history").len(), 501);
    }

    #[tokio::test]
    async fn events_and_target_sets_round_trip() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = SqliteStore::open(dir.path(), 64).expect("open");
        let a = AlertId::parse("al_a").expect("id");
        let b = AlertId::parse("al_b").expect("id");
        let ev = |alert: &AlertId, seq, scope, staff| {
            Write::Event(EventRecord {
                seq,
                alert: alert.clone(),
                scope,
                staff,
                at_ms: 0,
                frame: Frame::from(format!("{{\"seq\":{seq}}}")),
            })
        };
        let target = |sub: &str| TargetRecord {
            sub: sub.into(),
            unit: Unit::Volunteer,
        };
        store
            .commit(vec![
                Write::Targets {
                    alert: a.clone(),
                    first_seq: 1,
                    targets: vec![target("old"), target("other")],
                },
                ev(&a, 1, Scope::NewTargets, true),
                ev(&b, 2, Scope::NewTargets, true),
                Write::Targets {
                    alert: a.clone(),
                    first_seq: 3,
                    targets: vec![target("new")],
                },
                ev(&a, 3, Scope::NewTargets, false),
                ev(&a, 4, Scope::One("old".into()), false),
                ev(&a, 5, Scope::Targets, true),
            ])
            .await
            .expect("commit");
        let seqs = |v: Vec<StoredEvent>| v.into_iter().map(|e| e.seq).collect::<Vec<_>>();
        let staff = store
            .events_since(1, EventFilter::Staff, 100)
            .await
            .expect("replay");
        assert_eq!(seqs(staff), vec![2, 5]);
        let of_a = store
            .events_since(1, EventFilter::Alerts(vec![a.clone()]), 100)
            .await
            .expect("replay");
        assert!(matches!(&of_a[1].scope, Scope::One(s) if &**s == "old"));
        assert_eq!(seqs(of_a), vec![3, 4, 5]);
        let snap = store.load().await.expect("load");
        assert_eq!(snap.last_seq, 5);
        let mut targets: Vec<_> = snap
            .targets
            .iter()
            .map(|(al, t, first)| (al.as_str().to_string(), t.sub.to_string(), *first))
            .collect();
        targets.sort();
        assert_eq!(
            targets,
            vec![
                ("al_a".into(), "new".into(), 3),
                ("al_a".into(), "old".into(), 1),
                ("al_a".into(), "other".into(), 1)
            ]
        );
    }
}
