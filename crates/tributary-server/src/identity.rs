//! A node's identity on disk: which node id a data directory belongs to, and the
//! incarnation of that directory.
//!
//! The incarnation is a random number chosen when a data directory is first used. Raft
//! membership records each member's incarnation, and a node refuses raft messages addressed
//! to another incarnation. So a node that comes back with a wiped data directory cannot vote
//! or count toward a commit quorum as if it still had its log — that would let a majority
//! that never saw an acknowledged write elect a leader and lose it. It stays out until an
//! operator replaces it (`trib cluster replace-node`), which re-adds it as a learner that
//! catches up before it votes again.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const FILE: &str = "identity.json";

/// What `identity.json` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The node id this directory belongs to.
    pub node_id: u64,
    /// This directory's incarnation (never 0 for a directory created by this release).
    pub incarnation: u64,
}

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

impl Identity {
    /// Reads the identity, or creates one. `has_data` says whether the directory already
    /// holds raft state from a release before identities: such a directory keeps
    /// incarnation 0, which membership written by that release also carries.
    pub fn load_or_create(data_dir: &Path, node_id: u64, has_data: bool) -> anyhow::Result<Self> {
        let file = path(data_dir);
        match std::fs::read(&file) {
            Ok(raw) => {
                let identity: Identity = serde_json::from_slice(&raw).map_err(|e| {
                    anyhow::anyhow!("{} is not a valid identity file: {e}", file.display())
                })?;
                if identity.node_id != node_id {
                    anyhow::bail!(
                        "data dir {} belongs to node {}, not node {node_id}; start node {} with it, or give node {node_id} its own data dir",
                        data_dir.display(),
                        identity.node_id,
                        identity.node_id
                    );
                }
                Ok(identity)
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let incarnation = if has_data {
                    0
                } else {
                    rand::random::<u64>().max(1)
                };
                let identity = Identity {
                    node_id,
                    incarnation,
                };
                identity.write(data_dir)?;
                Ok(identity)
            }
            Err(err) => Err(anyhow::anyhow!("cannot read {}: {err}", file.display())),
        }
    }

    /// Writes the file durably (temp file, fsync, rename, fsync the directory).
    fn write(&self, data_dir: &Path) -> anyhow::Result<()> {
        let tmp = data_dir.join(format!("{FILE}.tmp"));
        let mut out = std::fs::File::create(&tmp)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", tmp.display()))?;
        out.write_all(&serde_json::to_vec(self)?)?;
        out.sync_all()?;
        std::fs::rename(&tmp, path(data_dir))?;
        std::fs::File::open(data_dir)?.sync_all()?;
        Ok(())
    }

    /// Whether a raft message addressed to `incarnation` is for this directory.
    pub fn accepts(&self, incarnation: u64) -> bool {
        incarnation == 0 || self.incarnation == 0 || incarnation == self.incarnation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = Identity::load_or_create(dir.path(), 2, false).expect("create");
        assert_ne!(first.incarnation, 0);
        let again = Identity::load_or_create(dir.path(), 2, false).expect("read");
        assert_eq!(first, again);
    }

    #[test]
    fn another_nodes_directory_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        Identity::load_or_create(dir.path(), 2, false).expect("create");
        let err = Identity::load_or_create(dir.path(), 3, false)
            .expect_err("wrong node")
            .to_string();
        assert!(err.contains("belongs to node 2, not node 3"), "{err}");
    }

    #[test]
    fn a_wiped_directory_gets_a_new_incarnation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = Identity::load_or_create(dir.path(), 1, false).expect("create");
        std::fs::remove_file(dir.path().join(FILE)).expect("wipe");
        let new = Identity::load_or_create(dir.path(), 1, false).expect("create");
        assert_ne!(old.incarnation, new.incarnation);
        assert!(!new.accepts(old.incarnation));
        assert!(new.accepts(new.incarnation));
    }
}
