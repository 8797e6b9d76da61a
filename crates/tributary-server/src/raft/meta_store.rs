//! RocksDB holds the small per-group raft state: vote, committed and purged log ids, and
//! the applied position of shard state machines. Never record payloads (those live in the
//! segment files, written once).

use std::io;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::GroupId;

/// Keys of per-group values.
#[derive(Debug, Clone, Copy)]
pub enum GroupKey {
    /// The raft vote (must be durable before openraft acts on it).
    Vote,
    /// The last committed log id known to this node.
    Committed,
    /// The last purged log id.
    Purged,
    /// The shard state machine's applied log id and membership.
    Applied,
    /// A shard group's newest snapshot (its retention trim point), written before openraft
    /// may purge the log below it.
    Snapshot,
    /// A shard group's idempotent-producer table (see `idempotence`).
    Producers,
}

impl GroupKey {
    fn name(self) -> &'static str {
        match self {
            GroupKey::Vote => "vote",
            GroupKey::Committed => "committed",
            GroupKey::Purged => "purged",
            GroupKey::Applied => "applied",
            GroupKey::Snapshot => "snapshot",
            GroupKey::Producers => "producers",
        }
    }
}

/// The node's RocksDB instance.
pub struct MetaStore {
    db: rocksdb::DB,
}

fn io_err(err: rocksdb::Error) -> io::Error {
    io::Error::other(format!("rocksdb: {err}"))
}

fn key(group: GroupId, key: GroupKey) -> String {
    format!("group/{group:016x}/{}", key.name())
}

impl MetaStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> io::Result<Self> {
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        // Small values, few writes: keep the footprint low.
        options.set_max_open_files(64);
        options.set_keep_log_file_num(4);
        let db = rocksdb::DB::open(&options, path).map_err(io_err)?;
        Ok(Self { db })
    }

    /// Reads a JSON value.
    pub fn get<T: DeserializeOwned>(
        &self,
        group: GroupId,
        name: GroupKey,
    ) -> io::Result<Option<T>> {
        match self.db.get(key(group, name)).map_err(io_err)? {
            None => Ok(None),
            Some(raw) => serde_json::from_slice(&raw).map(Some).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("group {group} {}: {e}", name.name()),
                )
            }),
        }
    }

    /// Writes a JSON value; `durable` fsyncs the RocksDB WAL before returning.
    pub fn put<T: Serialize>(
        &self,
        group: GroupId,
        name: GroupKey,
        value: &T,
        durable: bool,
    ) -> io::Result<()> {
        let raw =
            serde_json::to_vec(value).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let mut options = rocksdb::WriteOptions::default();
        options.set_sync(durable);
        self.db
            .put_opt(key(group, name), raw, &options)
            .map_err(io_err)
    }

    /// Removes every value of a group (its stream was deleted).
    pub fn delete_group(&self, group: GroupId) -> io::Result<()> {
        let mut options = rocksdb::WriteOptions::default();
        options.set_sync(true);
        let mut batch = rocksdb::WriteBatch::default();
        for name in [
            GroupKey::Vote,
            GroupKey::Committed,
            GroupKey::Purged,
            GroupKey::Applied,
            GroupKey::Snapshot,
            GroupKey::Producers,
        ] {
            batch.delete(key(group, name));
        }
        self.db.write_opt(batch, &options).map_err(io_err)
    }
}
