//! Memory bounds of the learner's state path, measured with a counting global allocator (its own
//! test binary, one test, so nothing else allocates meanwhile): a snapshot of a large sample
//! reservoir must not assemble copies of it in memory. The 30-minute soak's RSS grew with the
//! reservoir several times over because each snapshot held about four transient copies of the
//! samples (a clone, its byte form, two growing CBOR buffers); glibc kept the freed space.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use adaptd::cbor::Bytes;
use adaptd::state::samples::SampleStore;
use adaptd::state::store::{SnapshotData, Store};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            let now = CURRENT.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
        CURRENT.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = System.realloc(p, l, new);
        if !q.is_null() {
            if new >= l.size() {
                let now = CURRENT.fetch_add(new - l.size(), Ordering::Relaxed) + new - l.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                CURRENT.fetch_sub(l.size() - new, Ordering::Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static A: Counting = Counting;

const MIB: usize = 1 << 20;

#[test]
fn a_snapshot_holds_at_most_one_transient_copy_of_the_samples() {
    let dim = 1280;
    let budget = 16 * MIB;
    let mut samples = SampleStore::new(dim, budget as u64, 1);
    // 4 classes, offered twice what fits: the reservoir ends full.
    for i in 0..(2 * budget / (dim * 4)) {
        let x: Vec<f32> = (0..dim)
            .map(|j| ((i * 31 + j) % 97) as f32 * 0.01)
            .collect();
        samples.add(["a", "b", "c", "d"][i % 4], &x);
    }
    let kept = samples.len() * dim * 4;
    assert!(kept > budget * 9 / 10, "reservoir not full: {kept} bytes");
    // A full reservoir holds no growth slack.
    assert_eq!(samples.heap_bytes(), kept);

    let dir = tempfile::tempdir().expect("tempdir");
    let (mut store, _) = Store::open(dir.path(), 3).expect("open state dir");
    let before = CURRENT.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let data = SnapshotData {
        format: "adaptd-state-1".into(), // store.rs: the format Store::open accepts
        last_seq: 0,
        head: Bytes(Vec::new()),
        samples: Bytes(samples.to_bytes()),
        dedup: vec![[0; 16]; 4096],
        ledger: Bytes(Vec::new()),
    };
    store.snapshot(&data, 0).expect("snapshot");
    drop(data);
    let extra = PEAK.load(Ordering::Relaxed) - before;
    println!(
        "reservoir {:.1} MiB, snapshot peak extra {:.1} MiB ({:.2}x)",
        kept as f64 / MIB as f64,
        extra as f64 / MIB as f64,
        extra as f64 / kept as f64
    );
    // One exactly sized encoding of the samples, plus buffers (64 KiB writer, the dedup keys).
    assert!(
        extra <= kept + 2 * MIB,
        "a snapshot of {kept} bytes of samples allocated {extra} bytes at its peak"
    );

    // And it loads back to the same samples.
    let (_, recovered) = Store::open(dir.path(), 3).expect("reopen");
    assert!(
        recovered.corrupt_snapshot.is_none(),
        "{:?}",
        recovered.corrupt_snapshot
    );
    let snap = recovered.snapshot.expect("snapshot written");
    let back = SampleStore::from_bytes(&snap.samples.0, dim, budget as u64, 1).expect("load");
    assert_eq!(back.len(), samples.len());
    assert!(back.iter().zip(samples.iter()).all(|(a, b)| a == b));
}
