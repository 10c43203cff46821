//! The embedded token store: one SQLite file at `store.path` (CONTRACT sections 2 and 6).
//!
//! Created with mode 0600, in WAL mode with `synchronous = FULL`, so every token write is one
//! transaction flushed to disk before it returns. The schema is versioned
//! (`PRAGMA user_version`) and migrated forward on open. Records are sealed by [`Sealer`].
//! Calls block: async callers run them on the blocking pool.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use super::{
    KeyCheck, Refresh, RuleRow, Sealer, SpendRow, StoreError, StoreFuture, StoredToken, TokenKind,
    TokenStore,
};
use crate::secret::StoreKey;

/// The newest schema version this build writes.
const SCHEMA_VERSION: i64 = 3;

/// How often, 10 ms apart, opening a store retries a step SQLite answers "busy" or "locked":
/// another process setting up the same new store (switching it to WAL, creating the schema)
/// holds locks that `busy_timeout` does not wait for. 500 × 10 ms = 5 s.
const OPEN_ATTEMPTS: u32 = 500;

/// Runs `step`, again while SQLite reports a lock held by another connection.
fn retry_locked<T>(mut step: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let mut attempts = 1;
    loop {
        match step() {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && attempts < OPEN_ATTEMPTS =>
            {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// The embedded SQLite store. Cloning it shares the connection.
#[derive(Clone)]
pub struct SqliteStore {
    path: Arc<Path>,
    conn: Arc<Mutex<rusqlite::Connection>>,
    sealer: Sealer,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("encrypted", &self.sealer.encrypts())
            .finish_non_exhaustive()
    }
}

/// Creates the file with mode 0600 if it does not exist (SQLite gives its `-wal` and `-shm`
/// files the same mode).
fn create_private(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path).map(drop)
}

impl SqliteStore {
    /// Opens (creating it if missing) the store at `path`; with `key`, records are encrypted
    /// and the key is checked against the store's key-check record.
    pub fn open(path: &Path, key: Option<&StoreKey>) -> Result<Self, StoreError> {
        let io = |e: &dyn fmt::Display| StoreError::Io {
            at: path.display().to_string(),
            message: e.to_string(),
        };
        create_private(path).map_err(|e| io(&e))?;
        let conn = rusqlite::Connection::open(path).map_err(|e| io(&e))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| io(&e))?;
        // WAL: readers never wait for a writer; FULL: a commit is on disk when it returns.
        let mode: String =
            retry_locked(|| conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)))
                .map_err(|e| io(&e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(io(&format!("cannot use WAL journaling (got {mode})")));
        }
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
            .map_err(|e| io(&e))?;
        retry_locked(|| migrate(&conn)).map_err(|e| io(&e))?;
        let store = Self {
            path: Arc::from(path),
            conn: Arc::new(Mutex::new(conn)),
            sealer: Sealer::new(key),
        };
        store.check_key(true)?;
        Ok(store)
    }

    /// Opens an existing store without changing it (`xgate check`); `None` if there is none.
    pub fn open_read_only(path: &Path, key: Option<&StoreKey>) -> Result<Option<Self>, StoreError> {
        if !path.exists() {
            return Ok(None);
        }
        let conn = rusqlite::Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| StoreError::Io {
            at: path.display().to_string(),
            message: e.to_string(),
        })?;
        let store = Self {
            path: Arc::from(path),
            conn: Arc::new(Mutex::new(conn)),
            sealer: Sealer::new(key),
        };
        store.check_key(false)?;
        Ok(Some(store))
    }

    fn key_error(&self, message: &str) -> StoreError {
        StoreError::Key {
            at: self.path.display().to_string(),
            message: message.to_owned(),
        }
    }

    fn io_error(&self, e: &dyn fmt::Display) -> StoreError {
        StoreError::Io {
            at: self.path.display().to_string(),
            message: e.to_string(),
        }
    }

    /// The key-check record: written with the first key (when `write`), verified on every
    /// later open.
    fn check_key(&self, write: bool) -> Result<(), StoreError> {
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let check: Option<Vec<u8>> = conn
            .query_row("SELECT value FROM meta WHERE key = 'key_check'", [], |r| {
                r.get(0)
            })
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })
            .map_err(|e| self.io_error(&e))?;
        let has_tokens: bool = conn
            .query_row("SELECT EXISTS (SELECT 1 FROM tokens)", [], |r| r.get(0))
            .map_err(|e| self.io_error(&e))?;
        let judged = self
            .sealer
            .judge(check.as_deref(), has_tokens, write)
            .map_err(|e| self.io_error(&e))?;
        match judged {
            KeyCheck::Fits => Ok(()),
            KeyCheck::Wrong(why) => Err(self.key_error(why)),
            KeyCheck::Write(sealed) => {
                // Another process opening the new store at the same moment may have written
                // its check first: keep the first, then verify ours opens it.
                retry_locked(|| {
                    conn.execute(
                        "INSERT INTO meta (key, value) VALUES ('key_check', ?1)
                         ON CONFLICT (key) DO NOTHING",
                        [&sealed],
                    )
                })
                .map_err(|e| self.io_error(&e))?;
                let stored: Vec<u8> = conn
                    .query_row("SELECT value FROM meta WHERE key = 'key_check'", [], |r| {
                        r.get(0)
                    })
                    .map_err(|e| self.io_error(&e))?;
                match self.sealer.judge(Some(&stored), has_tokens, false) {
                    Ok(KeyCheck::Fits) => Ok(()),
                    _ => {
                        Err(self
                            .key_error("store.encryption_key does not open this store (wrong key)"))
                    }
                }
            }
        }
    }
}

/// Brings the schema to [`SCHEMA_VERSION`], one transaction per step.
fn migrate(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version < 1 {
        conn.execute_batch(
            "BEGIN IMMEDIATE;
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS tokens (
                 identity TEXT NOT NULL,
                 kind TEXT NOT NULL,
                 data BLOB NOT NULL,
                 updated_at INTEGER NOT NULL,
                 PRIMARY KEY (identity, kind)
             );
             PRAGMA user_version = 1;
             COMMIT;",
        )
        .inspect_err(|_| {
            // A step that failed after BEGIN leaves the transaction open; close it so the
            // caller can retry from a clean connection.
            if !conn.is_autocommit() {
                let _rolled_back = conn.execute_batch("ROLLBACK");
            }
        })?;
    }
    if version < 2 {
        // Version 2: the metered spend (CONTRACT section 11 rule 4).
        conn.execute_batch(
            "BEGIN IMMEDIATE;
             CREATE TABLE IF NOT EXISTS spend (
                 day TEXT NOT NULL,
                 client TEXT NOT NULL,
                 identity TEXT NOT NULL,
                 endpoint TEXT NOT NULL,
                 requests INTEGER NOT NULL,
                 resources INTEGER NOT NULL,
                 repeats INTEGER NOT NULL,
                 posts INTEGER NOT NULL,
                 micros INTEGER NOT NULL,
                 PRIMARY KEY (day, client, identity, endpoint)
             );
             PRAGMA user_version = 2;
             COMMIT;",
        )
        .inspect_err(|_| {
            if !conn.is_autocommit() {
                let _rolled_back = conn.execute_batch("ROLLBACK");
            }
        })?;
    }
    if version < 3 {
        // Version 3: the clients' filtered-stream rules (CONTRACT section 12 rule 2).
        conn.execute_batch(
            "BEGIN IMMEDIATE;
             CREATE TABLE IF NOT EXISTS stream_rules (
                 app TEXT NOT NULL,
                 client TEXT NOT NULL,
                 x_id TEXT NOT NULL,
                 value TEXT NOT NULL,
                 x_tag TEXT NOT NULL,
                 tag TEXT,
                 PRIMARY KEY (app, client, x_id)
             );
             PRAGMA user_version = 3;
             COMMIT;",
        )
        .inspect_err(|_| {
            if !conn.is_autocommit() {
                let _rolled_back = conn.execute_batch("ROLLBACK");
            }
        })?;
    }
    if version > SCHEMA_VERSION {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "schema version {version} is newer than this xgate understands ({SCHEMA_VERSION}): upgrade xgate"
        )));
    }
    Ok(())
}

impl SqliteStore {
    /// [`TokenStore::load`], on the calling thread.
    pub fn load_blocking(
        &self,
        identity: &str,
        kind: TokenKind,
    ) -> Result<Option<StoredToken>, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let data: Option<Vec<u8>> = conn
            .query_row(
                "SELECT data FROM tokens WHERE identity = ?1 AND kind = ?2",
                [identity, kind.as_str()],
                |r| r.get(0),
            )
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })
            .map_err(|e| self.io_error(&e))?;
        let Some(data) = data else {
            return Ok(None);
        };
        self.sealer
            .open_token(identity, kind, &data)
            .map(Some)
            .map_err(|(key, why)| {
                if key {
                    self.key_error(&why)
                } else {
                    self.io_error(&why)
                }
            })
    }

    /// [`TokenStore::save`], on the calling thread.
    pub fn save_blocking(&self, identity: &str, token: &StoredToken) -> Result<(), StoreError> {
        let kind = token.kind();
        let data = self
            .sealer
            .seal_token(identity, token)
            .map_err(|e| self.io_error(&e))?;
        let now = crate::clock::Clock::unix_seconds(&crate::clock::SystemClock);
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| self.io_error(&e))?;
        tx.execute(
            "INSERT INTO tokens (identity, kind, data, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (identity, kind) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at",
            rusqlite::params![identity, kind.as_str(), data, i64::try_from(now).unwrap_or(i64::MAX)],
        )
        .map_err(|e| self.io_error(&e))?;
        tx.commit().map_err(|e| self.io_error(&e))
    }

    /// One durable write the size of a commit (a `meta` row, its page journaled like a
    /// token's): fails now, before a refresh asks X, if the directory is read-only or the disk
    /// is full (`SQLITE_READONLY`, `SQLITE_FULL`), and changes no token.
    fn probe_write(&self) -> Result<(), StoreError> {
        let now = crate::clock::Clock::unix_seconds(&crate::clock::SystemClock);
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('refresh_begun_at', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [now.to_string().into_bytes()],
        )
        .map(drop)
        .map_err(|e| self.io_error(&e))
    }

    /// [`TokenStore::delete`], on the calling thread.
    pub fn delete_blocking(&self, identity: &str, kind: TokenKind) -> Result<(), StoreError> {
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        conn.execute(
            "DELETE FROM tokens WHERE identity = ?1 AND kind = ?2",
            [identity, kind.as_str()],
        )
        .map(drop)
        .map_err(|e| self.io_error(&e))
    }
}

/// A figure as SQLite stores it (a signed 64-bit integer).
fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl SqliteStore {
    /// [`TokenStore::add_spend`], on the calling thread.
    pub fn add_spend_blocking(&self, rows: &[SpendRow]) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| self.io_error(&e))?;
        for r in rows {
            tx.execute(
                "INSERT INTO spend (day, client, identity, endpoint, requests, resources, repeats, posts, micros)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (day, client, identity, endpoint) DO UPDATE SET
                     requests = requests + excluded.requests,
                     resources = resources + excluded.resources,
                     repeats = repeats + excluded.repeats,
                     posts = posts + excluded.posts,
                     micros = micros + excluded.micros",
                rusqlite::params![
                    r.day,
                    r.client,
                    r.identity,
                    r.endpoint,
                    int(r.requests),
                    int(r.resources),
                    int(r.repeats),
                    int(r.posts),
                    int(r.micros)
                ],
            )
            .map_err(|e| self.io_error(&e))?;
        }
        tx.commit().map_err(|e| self.io_error(&e))
    }

    /// [`TokenStore::spend`], on the calling thread.
    pub fn spend_blocking(&self, from: &str, to: &str) -> Result<Vec<SpendRow>, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        if !has_table(&conn, "spend").map_err(|e| self.io_error(&e))? {
            // A store a read-only open found at version 1: nothing was metered yet.
            return Ok(Vec::new());
        }
        let mut stmt = conn
            .prepare(
                "SELECT day, client, identity, endpoint, requests, resources, repeats, posts, micros
                 FROM spend WHERE day >= ?1 AND day <= ?2 ORDER BY day, client, identity, endpoint",
            )
            .map_err(|e| self.io_error(&e))?;
        let uint = |v: i64| u64::try_from(v).unwrap_or(0);
        stmt.query_map([from, to], |r| {
            Ok(SpendRow {
                day: r.get(0)?,
                client: r.get(1)?,
                identity: r.get(2)?,
                endpoint: r.get(3)?,
                requests: uint(r.get(4)?),
                resources: uint(r.get(5)?),
                repeats: uint(r.get(6)?),
                posts: uint(r.get(7)?),
                micros: uint(r.get(8)?),
            })
        })
        .and_then(Iterator::collect)
        .map_err(|e| self.io_error(&e))
    }

    /// [`TokenStore::stream_rules`], on the calling thread.
    pub fn stream_rules_blocking(&self, app: &str) -> Result<Vec<RuleRow>, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        if !has_table(&conn, "stream_rules").map_err(|e| self.io_error(&e))? {
            return Ok(Vec::new());
        }
        let mut stmt = conn
            .prepare(
                "SELECT client, x_id, value, x_tag, tag FROM stream_rules
                 WHERE app = ?1 ORDER BY client, rowid",
            )
            .map_err(|e| self.io_error(&e))?;
        stmt.query_map([app], |r| {
            Ok(RuleRow {
                client: r.get(0)?,
                x_id: r.get(1)?,
                value: r.get(2)?,
                x_tag: r.get(3)?,
                tag: r.get(4)?,
            })
        })
        .and_then(Iterator::collect)
        .map_err(|e| self.io_error(&e))
    }

    /// [`TokenStore::change_stream_rules`], on the calling thread.
    pub fn change_stream_rules_blocking(
        &self,
        app: &str,
        add: &[RuleRow],
        remove: &[(String, String)],
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| self.io_error(&e))?;
        for (client, x_id) in remove {
            tx.execute(
                "DELETE FROM stream_rules WHERE app = ?1 AND client = ?2 AND x_id = ?3",
                rusqlite::params![app, client, x_id],
            )
            .map_err(|e| self.io_error(&e))?;
        }
        for r in add {
            tx.execute(
                "INSERT OR REPLACE INTO stream_rules (app, client, x_id, value, x_tag, tag)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                rusqlite::params![app, r.client, r.x_id, r.value, r.x_tag, r.tag],
            )
            .map_err(|e| self.io_error(&e))?;
        }
        tx.commit().map_err(|e| self.io_error(&e))
    }

    /// [`TokenStore::load_meta`], on the calling thread.
    pub fn load_meta_blocking(&self, key: &str) -> Result<Option<String>, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| {
            r.get::<_, Vec<u8>>(0)
        })
        .map(|v| Some(String::from_utf8_lossy(&v).into_owned()))
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })
        .map_err(|e| self.io_error(&e))
    }

    /// [`TokenStore::save_meta`], on the calling thread.
    pub fn save_meta_blocking(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            rusqlite::params![key, value.as_bytes()],
        )
        .map(drop)
        .map_err(|e| self.io_error(&e))
    }
}

fn has_table(conn: &rusqlite::Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

/// Runs a blocking store call on the runtime's blocking pool (SQLite calls block on disk).
fn blocking<T: Send + 'static>(
    store: &SqliteStore,
    call: impl FnOnce(&SqliteStore) -> Result<T, StoreError> + Send + 'static,
) -> StoreFuture<'static, T> {
    let store = store.clone();
    Box::pin(async move {
        let at = store.path.display().to_string();
        tokio::task::spawn_blocking(move || call(&store))
            .await
            .map_err(|e| StoreError::Io {
                at,
                message: format!("the store call did not finish: {e}"),
            })?
    })
}

impl TokenStore for SqliteStore {
    fn load<'a>(
        &'a self,
        identity: &'a str,
        kind: TokenKind,
    ) -> StoreFuture<'a, Option<StoredToken>> {
        let identity = identity.to_owned();
        blocking(self, move |s| s.load_blocking(&identity, kind))
    }

    fn save<'a>(&'a self, identity: &'a str, token: &'a StoredToken) -> StoreFuture<'a, ()> {
        let (identity, token) = (identity.to_owned(), token.clone());
        blocking(self, move |s| s.save_blocking(&identity, &token))
    }

    fn delete<'a>(&'a self, identity: &'a str, kind: TokenKind) -> StoreFuture<'a, ()> {
        let identity = identity.to_owned();
        blocking(self, move |s| s.delete_blocking(&identity, kind))
    }

    fn begin_refresh<'a>(&'a self, identity: &'a str) -> StoreFuture<'a, Box<dyn Refresh>> {
        let identity = identity.to_owned();
        blocking(self, move |s| {
            let stored = s.load_blocking(&identity, TokenKind::Oauth2)?;
            s.probe_write()?;
            Ok(Box::new(SqliteRefresh {
                store: s.clone(),
                identity,
                stored,
            }) as Box<dyn Refresh>)
        })
    }

    fn add_spend<'a>(&'a self, rows: &'a [SpendRow]) -> StoreFuture<'a, ()> {
        let rows = rows.to_vec();
        blocking(self, move |s| s.add_spend_blocking(&rows))
    }

    fn spend<'a>(&'a self, from: &'a str, to: &'a str) -> StoreFuture<'a, Vec<SpendRow>> {
        let (from, to) = (from.to_owned(), to.to_owned());
        blocking(self, move |s| s.spend_blocking(&from, &to))
    }

    fn load_meta<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<String>> {
        let key = key.to_owned();
        blocking(self, move |s| s.load_meta_blocking(&key))
    }

    fn save_meta<'a>(&'a self, key: &'a str, value: &'a str) -> StoreFuture<'a, ()> {
        let (key, value) = (key.to_owned(), value.to_owned());
        blocking(self, move |s| s.save_meta_blocking(&key, &value))
    }

    fn stream_rules<'a>(&'a self, app: &'a str) -> StoreFuture<'a, Vec<RuleRow>> {
        let app = app.to_owned();
        blocking(self, move |s| s.stream_rules_blocking(&app))
    }

    fn change_stream_rules<'a>(
        &'a self,
        app: &'a str,
        add: &'a [RuleRow],
        remove: &'a [(String, String)],
    ) -> StoreFuture<'a, ()> {
        let (app, add, remove) = (app.to_owned(), add.to_vec(), remove.to_vec());
        blocking(self, move |s| {
            s.change_stream_rules_blocking(&app, &add, &remove)
        })
    }
}

/// A refresh on the embedded store: the record read at its start, committed with one durable
/// transaction.
struct SqliteRefresh {
    store: SqliteStore,
    identity: String,
    stored: Option<StoredToken>,
}

impl fmt::Debug for SqliteRefresh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteRefresh")
            .field("identity", &self.identity)
            .field("stored", &self.stored)
            .finish_non_exhaustive()
    }
}

impl Refresh for SqliteRefresh {
    fn stored(&self) -> Option<&StoredToken> {
        self.stored.as_ref()
    }

    fn commit(self: Box<Self>, token: StoredToken) -> StoreFuture<'static, ()> {
        let Self {
            store, identity, ..
        } = *self;
        blocking(&store, move |s| s.save_blocking(&identity, &token))
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xgate-store-{name}-{}", std::process::id()));
        let _ignored = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn token() -> StoredToken {
        StoredToken::Oauth2 {
            access_token: "ACCESS-abc".into(),
            refresh_token: Some("REFRESH-def".into()),
            expires_at: Some(1_700_000_000),
            scopes: vec!["tweet.read".into(), "offline.access".into()],
        }
    }

    /// Several processes (`serve`, `login`, a restarted replica) may open a new store at the
    /// same moment, with or without a key: every one of them must succeed.
    #[test]
    fn concurrent_first_opens_of_a_new_store_all_succeed() {
        for round in 0..20 {
            let path = dir(&format!("concurrent-{round}")).join("xgate.db");
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
            let openers: Vec<_> = (0..8)
                .map(|_| {
                    let (path, barrier) = (path.clone(), std::sync::Arc::clone(&barrier));
                    std::thread::spawn(move || {
                        barrier.wait();
                        let key = (round % 2 == 1).then(|| StoreKey::new([7; 32]));
                        SqliteStore::open(&path, key.as_ref()).map(drop)
                    })
                })
                .collect();
            for opener in openers {
                let opened = opener.join().unwrap();
                assert!(opened.is_ok(), "round {round}: {opened:?}");
            }
        }
    }

    #[test]
    fn tokens_round_trip_and_survive_reopening() {
        let path = dir("roundtrip").join("sub/xgate.db");
        let s = SqliteStore::open(&path, None).unwrap();
        assert_eq!(s.load_blocking("bob", TokenKind::Oauth2).unwrap(), None);
        s.save_blocking("bob", &token()).unwrap();
        drop(s);
        let s = SqliteStore::open(&path, None).unwrap();
        assert_eq!(
            s.load_blocking("bob", TokenKind::Oauth2).unwrap(),
            Some(token())
        );
        assert_eq!(s.load_blocking("bob", TokenKind::Bearer).unwrap(), None);
        s.delete_blocking("bob", TokenKind::Oauth2).unwrap();
        assert_eq!(s.load_blocking("bob", TokenKind::Oauth2).unwrap(), None);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let conn = rusqlite::Connection::open(&path).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn encrypted_stores_hide_tokens_and_refuse_a_wrong_key() {
        let path = dir("crypt").join("xgate.db");
        let key = StoreKey::new([7; 32]);
        let s = SqliteStore::open(&path, Some(&key)).unwrap();
        s.save_blocking("bob", &token()).unwrap();
        assert_eq!(
            s.load_blocking("bob", TokenKind::Oauth2).unwrap(),
            Some(token())
        );
        drop(s);
        let mut bytes = std::fs::read(&path).unwrap();
        if let Ok(wal) = std::fs::read(path.with_extension("db-wal")) {
            bytes.extend(wal);
        }
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("ACCESS-abc") && !text.contains("REFRESH-def"));
        let wrong = SqliteStore::open(&path, Some(&StoreKey::new([8; 32]))).unwrap_err();
        assert!(wrong.is_config());
        assert!(wrong.to_string().contains("wrong key"), "{wrong}");
        let none = SqliteStore::open(&path, None).unwrap_err();
        assert!(
            none.to_string().contains("set store.encryption_key"),
            "{none}"
        );
        // The right key still opens it.
        let s = SqliteStore::open(&path, Some(&key)).unwrap();
        assert_eq!(
            s.load_blocking("bob", TokenKind::Oauth2).unwrap(),
            Some(token())
        );
    }

    #[test]
    fn a_key_is_refused_for_a_store_with_plain_tokens() {
        let path = dir("plain").join("xgate.db");
        SqliteStore::open(&path, None)
            .unwrap()
            .save_blocking("bob", &token())
            .unwrap();
        let e = SqliteStore::open(&path, Some(&StoreKey::new([1; 32]))).unwrap_err();
        assert!(e.is_config());
        assert!(e.to_string().contains("unencrypted"), "{e}");
    }

    #[test]
    fn debug_never_shows_token_values() {
        let shown = format!("{:?}", token());
        assert!(
            !shown.contains("ACCESS") && !shown.contains("REFRESH"),
            "{shown}"
        );
    }
}
