//! The node config file (`tributary-server` `config.rs`), parsed the way `tributary serve
//! --config FILE` does (`toml::from_str::<NodeConfig>`, then `validate()`), on arbitrary text.
//!
//! Asserts: parsing, `validate`, `peer_map`, `advertised_address`, `quota_limits` and
//! `iterator_ttl` never panic; a config `validate()` accepts has a usable peer map that lists this
//! node, and builds the raft configuration of every group (what the node does next at startup)
//! without a panic or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary_server::config::NodeConfig;
use tributary_server::raft::{raft_config, METADATA_GROUP};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = toml::from_str::<NodeConfig>(text) else {
        return;
    };
    let peers = config.peer_map();
    let _ = config.advertised_address();
    let _ = config.quota_limits();
    let _ = config.iterator_ttl();
    if config.validate().is_err() {
        return;
    }
    let peers = match peers {
        Ok(peers) => peers,
        Err(e) => panic!("validate() accepted peers that peer_map() refuses: {e}"),
    };
    assert!(peers.is_empty() || peers.contains_key(&config.node_id));
    if !peers.is_empty() {
        assert_eq!(
            Some(&config.advertised_address()),
            peers.get(&config.node_id)
        );
    }
    for group in [METADATA_GROUP, 1] {
        if let Err(e) = raft_config(&config, group) {
            panic!("validate() accepted a config openraft refuses: {e}");
        }
    }
});
