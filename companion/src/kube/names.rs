//! The names an installation gives the objects only it uses (SPEC
//! "Installations"): its Lease, its `isogroup-state-<n>` shards, its
//! `isogroup-runtime` ConfigMap and the label on the leader's pod. The
//! default installation (the id is the companion's namespace) keeps the
//! plain names; any other carries its id, so two installations never share
//! a leader or state, in one namespace or not.

/// The plain names (the default installation's).
const LEASE: &str = "isogroup-companion";
const STATE: &str = "isogroup-state";
const RUNTIME: &str = "isogroup-runtime";
const LEADER_LABEL: &str = "isogroup.io/leader";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The Lease the replicas of this installation elect their leader on.
    pub lease: String,
    /// The settle record's shards are `<state>-<n>`.
    pub state: String,
    /// Source bindings and runtime rules.
    pub runtime: String,
    /// The label (value `"true"`) on the leader's pod, which its Service selects.
    pub leader_label: String,
    /// The single record an older companion kept, read when no shard exists
    /// (the default installation only: older companions had no ids).
    pub legacy_state: Option<String>,
}

impl Names {
    pub fn new(installation: &str, namespace: &str) -> Names {
        if installation == namespace {
            return Names {
                lease: LEASE.into(),
                state: STATE.into(),
                runtime: RUNTIME.into(),
                leader_label: LEADER_LABEL.into(),
                legacy_state: Some(STATE.into()),
            };
        }
        let id = suffix(installation);
        Names {
            lease: format!("{LEASE}-{id}"),
            state: format!("{STATE}-{id}"),
            runtime: format!("{RUNTIME}-{id}"),
            leader_label: format!("{LEADER_LABEL}-{id}"),
            legacy_state: None,
        }
    }

    /// Shard `n` of the settle record.
    pub fn shard(&self, n: usize) -> String {
        format!("{}-{n}", self.state)
    }

    /// Which shard a ConfigMap named `name` is, if it is one of these.
    pub fn shard_index(&self, name: &str) -> Option<usize> {
        let n = name.strip_prefix(self.state.as_str())?.strip_prefix('-')?;
        // Digits only: `isogroup-state-team-0` is another installation's.
        if n.is_empty() || n.len() > 6 || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        n.parse().ok()
    }
}

/// The id as it goes into object names (DNS labels: lowercase letters,
/// digits, `-`) and a label key's name part (at most 63 characters, so at
/// most 56 after `leader-`): kept as it is when it fits, else a readable
/// prefix and a hash of the whole id (ids differing only in case or in
/// `_` vs `-` do not meet).
fn suffix(id: &str) -> String {
    let fits = id.len() <= 40 && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if fits {
        return id.to_owned();
    }
    let readable: String =
        id.chars().take(30).map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    // FNV-1a 64 of the id, 40 bits in hex (as EnvoyFilter names).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{}-{:010x}", readable.trim_matches('-'), h >> 24).trim_start_matches('-').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_installation_keeps_the_plain_names_and_another_carries_its_id() {
        let plain = Names::new("isogroup-system", "isogroup-system");
        assert_eq!(
            (plain.lease.as_str(), plain.shard(0).as_str(), plain.runtime.as_str(), plain.leader_label.as_str()),
            ("isogroup-companion", "isogroup-state-0", "isogroup-runtime", "isogroup.io/leader")
        );
        let team = Names::new("team-a", "isogroup-system");
        assert_eq!(
            (team.lease.as_str(), team.shard(3).as_str(), team.runtime.as_str(), team.leader_label.as_str()),
            (
                "isogroup-companion-team-a",
                "isogroup-state-team-a-3",
                "isogroup-runtime-team-a",
                "isogroup.io/leader-team-a"
            )
        );
        assert_eq!(team.legacy_state, None);
        // each reads only its own shards
        assert_eq!(plain.shard_index("isogroup-state-12"), Some(12));
        assert_eq!(plain.shard_index("isogroup-state-team-a-3"), None);
        assert_eq!(plain.shard_index("isogroup-state"), None);
        assert_eq!(team.shard_index("isogroup-state-team-a-3"), Some(3));
        assert_eq!(team.shard_index("isogroup-state-3"), None);
    }

    #[test]
    fn ids_that_are_no_dns_label_are_hashed_and_stay_apart() {
        let long = "A".repeat(63);
        let (upper, under) = (Names::new("Team_A", "ns"), Names::new("team-a", "ns"));
        assert_ne!(upper.lease, under.lease);
        assert_ne!(Names::new("Team_A", "ns").lease, Names::new("team_a", "ns").lease);
        for n in [upper, Names::new(&long, "ns"), Names::new("x.y", "ns")] {
            let name_part = n.leader_label.strip_prefix("isogroup.io/").unwrap_or_default();
            assert!(name_part.len() <= 63, "{name_part}");
            let dns = |s: &str| s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            assert!(dns(&n.lease) && dns(&n.shard(0)) && dns(&n.runtime), "{n:?}");
            assert!(!n.lease.ends_with('-') && !name_part.ends_with('-'), "{n:?}");
        }
    }
}
