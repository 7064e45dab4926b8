//! What a head learned since a base version, as the labeled samples themselves: what the fleet
//! sends its peers instead of the whole head when nothing but learning happened since.

/// A learned sample: its label and embedding.
pub type Entry = (String, Vec<f32>);

/// The samples a head learned since version `base`. Any other change of its statistics
/// (unlearn, forget, reset, merge, a new version set from outside) ends the journal: only a
/// whole head says what happened then. A clone starts without one (it is another head).
#[derive(Debug, Default)]
pub struct Journal {
    base: Option<u64>,
    samples: Vec<Entry>,
    bytes: usize,
}

/// Past this many bytes of samples the journal ends: a peer is better off with the whole head
/// (a board that learned that much offline republishes it whole).
pub const MAX_JOURNAL_BYTES: usize = 16 << 20;

impl Clone for Journal {
    fn clone(&self) -> Journal {
        Journal::default()
    }
}

impl Journal {
    /// Starts over at version `base`.
    pub fn start(&mut self, base: u64) {
        self.base = Some(base);
        self.samples.clear();
        self.bytes = 0;
    }

    /// Ends the journal until the next [`start`](Self::start).
    pub fn end(&mut self) {
        self.base = None;
        self.samples = Vec::new();
        self.bytes = 0;
    }

    /// Records a learned sample.
    pub fn learned(&mut self, label: &str, x: &[f32]) {
        if self.base.is_none() {
            return;
        }
        self.bytes += label.len() + 4 * x.len();
        if self.bytes > MAX_JOURNAL_BYTES {
            self.end();
            return;
        }
        self.samples.push((label.to_string(), x.to_vec()));
    }

    /// The base version and the samples learned since, in order; `None` when the journal ended.
    pub fn since(&self) -> Option<(u64, &[Entry])> {
        self.base.map(|b| (b, self.samples.as_slice()))
    }

    /// Bytes of labels and embeddings recorded.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_from_start_until_it_ends() {
        let mut j = Journal::default();
        j.learned("a", &[1.0]);
        assert!(j.since().is_none(), "not started");
        j.start(4);
        j.learned("a", &[1.0, 2.0]);
        j.learned("b", &[3.0, 4.0]);
        let (base, s) = j.since().unwrap();
        assert_eq!(base, 4);
        assert_eq!(s.len(), 2);
        assert_eq!(s[1], ("b".to_string(), vec![3.0, 4.0]));
        assert_eq!(j.bytes(), 18);
        assert!(j.clone().since().is_none(), "a clone has no journal");
        j.end();
        assert!(j.since().is_none());
        j.start(9);
        assert_eq!(j.since().unwrap(), (9, &[][..]));
        // Too much to be worth a delta.
        let big = vec![0f32; MAX_JOURNAL_BYTES / 4];
        j.learned("a", &big);
        assert!(j.since().is_none());
    }
}
