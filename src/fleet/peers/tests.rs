//! Unit tests of the peer table and the running fleet total.

use super::*;
use crate::fleet::testing::{expect, head, ids, key, verify, D};
use crate::fleet::Identity;
use crate::fleet::VerifiedDelta;
use crate::head::Algorithm;

/// `peer`'s head `h` signed by `id`, verified and offered to `p` (8 peers, unbounded store).
fn take(
    p: &mut Peers,
    id: &Identity,
    peer: &str,
    h: &Head,
    trusted: &[[u8; 32]],
) -> Result<Accepted, FleetError> {
    p.accept(peer, verify(id, peer, h, trusted)?, 8, u64::MAX)
}

fn scores(h: &Head, x: &[f32]) -> Vec<(String, f32)> {
    let p = h.snapshot().predict(x, 10).unwrap();
    let mut v: Vec<(String, f32)> = p.top.into_iter().map(|s| (s.label, s.score)).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn merging_is_order_independent_and_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let [a, b, c] = ids(dir.path(), ["a", "b", "c"]);
    let trusted = [key(&a), key(&b), key(&c)];
    let local = head("cat", 4, 0.0, 3);
    let hb = head("cup", 5, 1.0, 7);
    let hc = head("cat", 3, 0.4, 2);
    let mut one = Peers::load(None, vec![]);
    let mut two = Peers::load(None, vec![]);
    take(&mut one, &b, "b", &hb, &trusted).unwrap();
    take(&mut one, &c, "c", &hc, &trusted).unwrap();
    take(&mut two, &c, "c", &hc, &trusted).unwrap();
    take(&mut two, &b, "b", &hb, &trusted).unwrap();
    let x = vec![0.3f32; D];
    let f1 = one.fleet_head(&local);
    assert_eq!(scores(&f1, &x), scores(&two.fleet_head(&local), &x));
    assert_eq!(f1.samples(), 12);
    assert_eq!(
        f1.version(),
        local.version(),
        "the fleet head keeps the local version"
    );
    // The same envelope again changes nothing.
    let again = take(&mut one, &b, "b", &hb, &trusted).unwrap();
    assert_eq!(again, Accepted::Unchanged);
    assert_eq!(scores(&one.fleet_head(&local), &x), scores(&f1, &x));
    // A newer head of a peer replaces its slot (never adds to it).
    let hb2 = head("cup", 2, 1.0, 8);
    take(&mut one, &b, "b", &hb2, &trusted).unwrap();
    assert_eq!(one.fleet_head(&local).samples(), 4 + 2 + 3);
}

#[test]
fn one_key_takes_one_slot() {
    let dir = tempfile::tempdir().unwrap();
    let [a, b] = ids(dir.path(), ["a", "b"]);
    let trusted = [key(&a), key(&b)];
    let mut p = Peers::load(None, vec![]);
    take(&mut p, &a, "a", &head("cat", 3, 0.0, 1), &trusted).unwrap();
    // a's key signing for a made-up device id.
    let sybil = verify(&a, "a2", &head("cup", 900, 1.0, 1), &trusted).unwrap();
    let e = p.accept("a2", sybil, 8, u64::MAX).unwrap_err();
    assert_eq!(e.code(), "fleet_key_reused");
    assert_eq!(p.total().unwrap().samples(), 3);
    take(&mut p, &b, "b", &head("cup", 2, 1.0, 1), &trusted).unwrap();
    // Once a's slot is withdrawn (a renamed board), its key may sign for the new id.
    assert!(p.withdraw("a"));
    let renamed = verify(&a, "a2", &head("cat", 3, 0.0, 1), &trusted).unwrap();
    p.accept("a2", renamed, 8, u64::MAX).unwrap();
    assert_eq!(p.total().unwrap().samples(), 5);
}

#[test]
fn replays_and_key_changes_are_refused_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let [a, a2] = ids(dir.path(), ["a", "a-new"]);
    let trusted = [key(&a), key(&a2)];
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let mut peers = Peers::load(Some(&state), vec![]);
    take(&mut peers, &a, "a", &head("x", 2, 0.0, 5), &trusted).unwrap();
    let old = verify(&a, "a", &head("x", 1, 0.0, 4), &trusted).unwrap();
    assert_eq!(
        peers.accept("a", old, 8, u64::MAX).unwrap_err().code(),
        "fleet_replay"
    );
    let same_version_other_head = verify(&a, "a", &head("y", 1, 0.0, 5), &trusted).unwrap();
    assert_eq!(
        peers
            .accept("a", same_version_other_head, 8, u64::MAX)
            .unwrap_err()
            .code(),
        "fleet_replay"
    );
    // After a restart the remembered version still holds, the same head is accepted again.
    peers.save_due(true);
    let mut peers = Peers::load(Some(&state), vec![]);
    let old = verify(&a, "a", &head("x", 1, 0.0, 4), &trusted).unwrap();
    assert_eq!(
        peers.accept("a", old, 8, u64::MAX).unwrap_err().code(),
        "fleet_replay"
    );
    let same = verify(&a, "a", &head("x", 2, 0.0, 5), &trusted).unwrap();
    assert_eq!(
        peers.accept("a", same, 8, u64::MAX).unwrap(),
        Accepted::Updated
    );
    // Another (even trusted) key cannot take over a peer id.
    let hijack = verify(&a2, "a", &head("x", 2, 0.0, 9), &trusted).unwrap();
    assert_eq!(
        peers.accept("a", hijack, 8, u64::MAX).unwrap_err().code(),
        "fleet_key_changed"
    );
    // Exclusion is remembered.
    assert!(peers.exclude("a"));
    let peers = Peers::load(Some(&state), vec![]);
    assert_eq!(peers.excluded, vec!["a".to_string()]);
}

fn head_of(algorithm: Algorithm, label: &str, n: usize, level: f32, version: u64) -> Head {
    let config = crate::head::HeadConfig {
        algorithm,
        ..crate::head::HeadConfig::default()
    };
    let mut h = Head::new(&config, D, crate::fleet::testing::SHA);
    for i in 0..n {
        let x: Vec<f32> = (0..D)
            .map(|j| level + ((i * 7 + j * 3 + label.len()) % 11) as f32 * 0.1)
            .collect();
        h.update(&x, label).unwrap();
    }
    h.set_version(version);
    h
}

/// The fleet head as before the running total: local merged with every head, in order.
fn merged(local: &Head, heads: &BTreeMap<String, Head>) -> Head {
    let mut h = local.clone();
    for p in heads.values() {
        h.merge(p).unwrap();
    }
    h
}

fn assert_close(a: &Head, b: &Head, x: &[f32]) {
    assert_eq!(a.samples(), b.samples());
    let (sa, sb) = (scores(a, x), scores(b, x));
    assert_eq!(sa.len(), sb.len());
    for ((la, va), (lb, vb)) in sa.iter().zip(&sb) {
        assert_eq!(la, lb);
        assert!((va - vb).abs() <= 1e-5, "{la}: {va} vs {vb}");
    }
    let (ma, mb) = (a.source_stats().sum(), b.source_stats().sum());
    let scale = mb.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    assert!(ma
        .iter()
        .zip(mb)
        .all(|(p, q)| (p - q).abs() <= 1e-9 * scale));
}

#[test]
fn the_running_total_follows_replacements_like_an_exact_merge() {
    use rand::{Rng as _, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let names = ["p0", "p1", "p2", "p3", "p4"];
    let keys = ids(dir.path(), names);
    let trusted: Vec<[u8; 32]> = keys.iter().map(key).collect();
    let labels = ["cat", "cup", "dog", "fox"];
    for algorithm in [
        Algorithm::Auto,
        Algorithm::Ncm,
        Algorithm::Slda,
        Algorithm::Ridge,
        Algorithm::Sgd,
    ] {
        let local = head_of(algorithm, "cat", 3, 0.2, 1);
        let state = dir.path().join(format!("state-{algorithm}"));
        std::fs::create_dir_all(&state).unwrap();
        let mut peers = Peers::load(Some(&state), vec![]);
        let mut latest: BTreeMap<String, Head> = BTreeMap::new();
        let mut version = [0u64; 5];
        let mut rng = rand::rngs::SmallRng::seed_from_u64(3);
        let x = vec![0.45f32; D];
        for step in 0..150 {
            let k = rng.gen_range(0..names.len());
            let (peer, id) = (names[k], &keys[k]);
            if step % 37 == 36 {
                assert_eq!(peers.withdraw(peer), latest.remove(peer).is_some());
            } else {
                version[k] += 1;
                let label = labels[rng.gen_range(0..labels.len())];
                let h = head_of(
                    algorithm,
                    label,
                    rng.gen_range(1..9),
                    rng.gen_range(0.0..1.0),
                    version[k],
                );
                let v = verify(id, peer, &h, &trusted).unwrap();
                assert_eq!(
                    peers.accept(peer, v, 8, u64::MAX).unwrap(),
                    Accepted::Updated
                );
                latest.insert(peer.into(), h);
            }
            let want = merged(&local, &latest);
            assert_close(&peers.fleet_head(&local), &want, &x);
        }
        // Exact updates rebuild only when due; sgd's (an average) at every replacement.
        if algorithm.is_exact() {
            assert!(peers.rebuilds <= 150 / rebuild_period(5), "{algorithm}");
        } else {
            assert!(peers.rebuilds > 100);
        }
        // A restart restores the same fleet head from the stored files.
        let before = peers.fleet_head(&local);
        peers.save_due(true);
        let mut again = Peers::load(Some(&state), vec![]);
        again.restore(&expect(), algorithm, "");
        assert_eq!(again.heads, peers.heads);
        assert_close(&again.fleet_head(&local), &before, &x);
        // Another algorithm on this board now: nothing restored, the files go.
        let other = if algorithm == Algorithm::Ncm {
            Algorithm::Slda
        } else {
            Algorithm::Ncm
        };
        let mut changed = Peers::load(Some(&state), vec![]);
        changed.restore(&expect(), other, "");
        assert!(changed.heads.is_empty());
        assert_eq!(changed.stored_bytes(), 0);
        assert!(changed.total().is_none());
    }
}

#[test]
fn a_damaged_file_drops_the_slot_until_the_retained_head_returns() {
    let dir = tempfile::tempdir().unwrap();
    let keys = ids(dir.path(), ["a", "b"]);
    let trusted: Vec<[u8; 32]> = keys.iter().map(key).collect();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let mut peers = Peers::load(Some(&state), vec![]);
    let ha = head("cat", 3, 0.0, 2);
    let hb = head("cup", 4, 1.0, 3);
    for (k, (p, h)) in [("a", &ha), ("b", &hb)].into_iter().enumerate() {
        let v = verify(&keys[k], p, h, &trusted).unwrap();
        peers.accept(p, v, 8, u64::MAX).unwrap();
    }
    let heads_dir = state.join(crate::state::files::FLEET_HEADS);
    assert_eq!(std::fs::read_dir(&heads_dir).unwrap().count(), 2);
    let stored = peers.stored_bytes();
    assert!(stored > 0);
    let file_a = heads_dir.join(crate::fleet::store::file_name("a", Kind::Head));
    let mut b = std::fs::read(&file_a).unwrap();
    let n = b.len() / 2;
    b[n] ^= 1;
    std::fs::write(&file_a, b).unwrap();
    peers.save_due(true);
    let mut again = Peers::load(Some(&state), vec![]);
    again.restore(&expect(), ha.algorithm(), "");
    assert_eq!(again.heads.keys().collect::<Vec<_>>(), ["b"]);
    // The retained head comes back: the same version is accepted into the empty slot.
    let v = verify(&keys[0], "a", &ha, &trusted).unwrap();
    assert_eq!(
        again.accept("a", v, 8, u64::MAX).unwrap(),
        Accepted::Updated
    );
    let local = head("dog", 1, 0.5, 1);
    assert_close(
        &again.fleet_head(&local),
        &peers.fleet_head(&local),
        &[0.3; D],
    );
    // The store's bound: a head that does not fit is refused and changes nothing.
    let mut big = head("cat", 5, 0.0, 9);
    big.merge(&head("dog", 2, 0.5, 1)).unwrap();
    big.set_version(9);
    let v = verify(&keys[0], "a", &big, &trusted).unwrap();
    let cap = again.stored_bytes();
    assert_eq!(
        again.accept("a", v, 8, cap).unwrap_err().code(),
        "fleet_store_full"
    );
    assert_eq!(again.heads.get("a").unwrap().version, 2);
    assert_eq!(again.stored_bytes(), stored);
    // Heads stored for another group are not restored (and their files go).
    let mut elsewhere = Peers::load(Some(&state), vec![]);
    elsewhere.restore(&expect(), ha.algorithm(), "another-group");
    assert!(
        elsewhere.heads.is_empty(),
        "heads of another group are not restored"
    );
    assert_eq!(elsewhere.stored_bytes(), 0);
}

/// A peer board's side of deltas: its head, learning, and what it publishes.
struct Sender<'a> {
    id: &'a Identity,
    name: &'a str,
    head: Head,
}

impl Sender<'_> {
    fn learn(&mut self, label: &str, level: f32, n: usize) {
        for i in 0..n {
            let x: Vec<f32> = (0..D)
                .map(|j| level + ((i * 5 + j * 3 + label.len()) % 7) as f32 * 0.1)
                .collect();
            self.head.update(&x, label).unwrap();
        }
    }

    /// The whole head and the delta, as `publish_local_head` sends them.
    fn publish(&mut self, trusted: &[[u8; 32]]) -> (Verified, VerifiedDelta) {
        let whole = verify(self.id, self.name, &self.head, trusted).unwrap();
        let d = self.id.seal_delta(self.name, "g", &self.head).unwrap();
        self.head.start_journal();
        let d = crate::fleet::open_delta(
            &d,
            self.name,
            "g",
            trusted,
            &expect(),
            self.head.algorithm(),
            1000,
        )
        .unwrap();
        (whole, d)
    }
}

#[test]
fn deltas_keep_the_total_equal_to_the_peers_whole_heads() {
    use rand::{Rng as _, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let names = ["p0", "p1", "p2"];
    let keys = ids(dir.path(), names);
    let trusted: Vec<[u8; 32]> = keys.iter().map(key).collect();
    let labels = ["cat", "cup", "dog"];
    let x = vec![0.45f32; D];
    for algorithm in [
        Algorithm::Auto,
        Algorithm::Ncm,
        Algorithm::Slda,
        Algorithm::Ridge,
    ] {
        let local = head_of(algorithm, "cat", 3, 0.2, 1);
        let state = dir.path().join(format!("deltas-{algorithm}"));
        std::fs::create_dir_all(&state).unwrap();
        let mut peers = Peers::load(Some(&state), vec![]);
        let mut senders: Vec<Sender<'_>> = names
            .iter()
            .zip(&keys)
            .map(|(name, id)| Sender {
                id,
                name,
                head: head_of(algorithm, "cat", 2, 0.1, 1),
            })
            .collect();
        let mut latest: BTreeMap<String, Head> = BTreeMap::new();
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let (mut applied, mut fetched) = (0, 0);
        for step in 0..120 {
            let s = &mut senders[rng.gen_range(0..names.len())];
            match step % 29 {
                // A change only a whole head carries.
                28 => {
                    let h = s.head.clone();
                    let c = h.classes();
                    let label = &c[c.len() - 1].name;
                    if c.len() > 1 {
                        s.head.forget(label);
                    }
                }
                _ => {
                    let label = labels[rng.gen_range(0..labels.len())];
                    s.learn(label, rng.gen_range(0.0..1.0), rng.gen_range(1..4));
                }
            }
            let (whole, d) = s.publish(&trusted);
            latest.insert(s.name.into(), s.head.clone());
            // One delta in ten is lost on the way.
            let outcome = if rng.gen_bool(0.1) {
                Accepted::Fetch(0)
            } else {
                peers.apply_delta(s.name, d, u64::MAX).unwrap()
            };
            match outcome {
                Accepted::Updated | Accepted::Unchanged => applied += 1,
                Accepted::Fetch(_) => {
                    fetched += 1;
                    // The retained whole head, fetched.
                    peers.accept(s.name, whole, 8, u64::MAX).unwrap();
                }
            }
            assert_eq!(peers.heads[s.name].version, s.head.version());
            assert_close(&peers.fleet_head(&local), &merged(&local, &latest), &x);
        }
        assert!(
            applied > 60 && fetched > 10,
            "{algorithm}: {applied} {fetched}"
        );
        // The whole head of a version reached by deltas changes nothing (and writes nothing).
        let s = &mut senders[0];
        s.learn("dog", 0.3, 2);
        let (whole, d) = s.publish(&trusted);
        assert_eq!(
            peers.apply_delta("p0", d, u64::MAX).unwrap(),
            Accepted::Updated
        );
        let s0 = peers.seen["p0"].clone();
        assert!(s0.log_chain.is_some() || s0.compacted);
        assert_eq!(
            peers.accept("p0", whole, 8, u64::MAX).unwrap(),
            Accepted::Unchanged
        );
        assert_eq!(peers.seen["p0"], s0);
        // A restart restores heads and delta logs alike.
        let s = &mut senders[1];
        s.learn("cup", 0.7, 3);
        let (_, d) = s.publish(&trusted);
        latest.insert("p0".into(), senders[0].head.clone());
        latest.insert("p1".into(), senders[1].head.clone());
        peers.apply_delta("p1", d, u64::MAX).unwrap();
        let before = peers.fleet_head(&local);
        assert_close(&before, &merged(&local, &latest), &x);
        peers.save_due(true);
        let mut again = Peers::load(Some(&state), vec![]);
        again.restore(&expect(), algorithm, "");
        assert_eq!(again.heads, peers.heads);
        assert_close(&again.fleet_head(&local), &before, &x);
        // A damaged log drops the slot (the retained head brings it back).
        let log = state
            .join(crate::state::files::FLEET_HEADS)
            .join(crate::fleet::store::file_name("p1", Kind::Delta));
        let mut b = std::fs::read(&log).unwrap();
        let n = b.len() - 3;
        b[n] ^= 1;
        std::fs::write(&log, b).unwrap();
        let mut damaged = Peers::load(Some(&state), vec![]);
        damaged.restore(&expect(), algorithm, "");
        assert!(!damaged.heads.contains_key("p1"));
        assert!(damaged.heads.contains_key("p0"));
    }
}

#[test]
fn a_delta_that_cannot_apply_asks_for_the_whole_head() {
    let dir = tempfile::tempdir().unwrap();
    let [a, b] = ids(dir.path(), ["a", "b"]);
    let trusted = [key(&a), key(&b)];
    let mut p = Peers::load(None, vec![]);
    let mut s = Sender {
        id: &a,
        name: "a",
        head: head("cat", 3, 0.0, 4),
    };
    // No head of the peer yet.
    s.learn("cat", 0.2, 1);
    let (whole, d) = s.publish(&trusted);
    assert_eq!(d.base, None, "no journal before the first publish");
    assert_eq!(p.apply_delta("a", d, u64::MAX).unwrap(), Accepted::Fetch(5));
    p.accept("a", whole, 8, u64::MAX).unwrap();
    // A gap: the delta from 5 to 6 never came.
    s.learn("cat", 0.3, 1);
    let _ = s.publish(&trusted);
    s.learn("cup", 0.3, 1);
    let (whole, d) = s.publish(&trusted);
    assert_eq!(d.base, Some(6));
    assert_eq!(p.apply_delta("a", d, u64::MAX).unwrap(), Accepted::Fetch(7));
    p.accept("a", whole, 8, u64::MAX).unwrap();
    // An old or repeated delta changes nothing.
    s.learn("cup", 0.4, 1);
    let (_, d) = s.publish(&trusted);
    let again = crate::fleet::VerifiedDelta {
        samples: d.samples.clone(),
        samples_bytes: d.samples_bytes.clone(),
        key: d.key.clone(),
        ..d
    };
    assert_eq!(p.apply_delta("a", d, u64::MAX).unwrap(), Accepted::Updated);
    assert_eq!(
        p.apply_delta("a", again, u64::MAX).unwrap(),
        Accepted::Unchanged
    );
    // Unlearning ends the journal: the next delta has no base.
    let x: Vec<f32> = (0..D)
        .map(|j| 0.4 + ((j * 3 + 3) % 7) as f32 * 0.1)
        .collect();
    s.head.unlearn(&x, "cup").unwrap();
    let (_, d) = s.publish(&trusted);
    assert_eq!(d.base, None);
    assert!(matches!(
        p.apply_delta("a", d, u64::MAX),
        Ok(Accepted::Fetch(_))
    ));
    // Another trusted key cannot extend a's slot; an excluded peer's deltas are refused.
    let mut mallory = Sender {
        id: &b,
        name: "a",
        head: head("cat", 1, 0.0, 1),
    };
    mallory.head.start_journal();
    mallory.learn("cat", 9.0, 1);
    let (_, d) = mallory.publish(&trusted);
    assert_eq!(
        p.apply_delta("a", d, u64::MAX).unwrap_err().code(),
        "fleet_key_changed"
    );
    p.exclude("a");
    s.learn("cup", 0.4, 1);
    let (_, d) = s.publish(&trusted);
    assert_eq!(
        p.apply_delta("a", d, u64::MAX).unwrap_err().code(),
        "fleet_excluded"
    );
}

#[test]
fn a_long_delta_log_is_folded_into_the_stored_head() {
    let dir = tempfile::tempdir().unwrap();
    let [a] = ids(dir.path(), ["a"]);
    let trusted = [key(&a)];
    let x = vec![0.45f32; D];
    for algorithm in [Algorithm::Auto, Algorithm::Slda] {
        let state = dir.path().join(format!("fold-{algorithm}"));
        std::fs::create_dir_all(&state).unwrap();
        let mut p = Peers::load(Some(&state), vec![]);
        let mut s = Sender {
            id: &a,
            name: "a",
            head: head_of(algorithm, "cat", 2, 0.1, 1),
        };
        let (whole, _) = s.publish(&trusted);
        p.accept("a", whole, 8, u64::MAX).unwrap();
        let local = head_of(algorithm, "cat", 3, 0.2, 1);
        let (mut folded, mut logged) = (0, 0);
        for k in 0..60 {
            s.learn(["cat", "cup"][k % 2], 0.1 * (k % 7) as f32, 3);
            let (whole, d) = s.publish(&trusted);
            assert_eq!(p.apply_delta("a", d, u64::MAX).unwrap(), Accepted::Updated);
            let seen = &p.seen["a"];
            assert!(seen.log_samples < COMPACT_AFTER);
            folded += usize::from(seen.compacted && seen.log_chain.is_none());
            logged = logged.max(seen.log_samples);
            let want = merged(&local, &BTreeMap::from([("a".to_string(), s.head.clone())]));
            assert_close(&p.fleet_head(&local), &want, &x);
            if k == 40 {
                // The peer's own head of a folded version is not a replay.
                let v = p.seen["a"].version;
                assert_eq!(v, whole.version);
                assert_eq!(
                    p.accept("a", whole, 8, u64::MAX).unwrap(),
                    Accepted::Unchanged
                );
            }
        }
        assert!(folded > 0 && logged > 3, "{algorithm}: {folded} {logged}");
        // Restored from the folded head and its log; rebuilt exactly the same.
        let before = p.fleet_head(&local);
        p.rebuild();
        assert_close(&p.fleet_head(&local), &before, &x);
        p.save_due(true);
        let mut again = Peers::load(Some(&state), vec![]);
        again.restore(&expect(), algorithm, "");
        assert_eq!(again.heads, p.heads);
        assert_close(&again.fleet_head(&local), &before, &x);
    }
}
