//! The learner's commands (`{root}/cmd/<name>`), executed in arrival order; each replies on
//! `{root}/result` or `{root}/error` and is acknowledged once its effect is durable: most by a
//! snapshot, `unlearn` and `relabel` by a write-ahead log record.

use rumqttc::Publish;
use serde_json::json;

use super::Learner;
use crate::cbor::F32s;
use crate::daemon::error::RequestError;
use crate::daemon::reply::CommandResult;
use crate::daemon::request::Command;
use crate::daemon::stats::bump;
use crate::daemon::workers::message_key;
use crate::head::{Head, HeadError};
use crate::state::recovery::{head_without, stores_without};
use crate::state::store::{UnlearnRecord, WalRecord};

impl Learner {
    /// Runs a parsed command (or answers why it could not be parsed), then acknowledges it.
    pub(super) fn command(&mut self, publish: &Publish, cmd: Result<Command, RequestError>) {
        let key = message_key(publish);
        let logged = matches!(cmd, Ok(Command::Unlearn { .. } | Command::Relabel { .. }));
        if logged && publish.dup && self.dedup.contains(&key) {
            // A broker's redelivery of a removal already logged: applying it again would
            // remove another sample with the same id.
            bump(&self.ctx.stats.duplicates);
            self.ctx.outbox.ack(publish);
            return;
        }
        let result = cmd.and_then(|c| {
            let name = c.kind().name();
            self.execute(c, key).map(|detail| (name, detail))
        });
        match result {
            Ok((name, detail)) => {
                let doc = CommandResult {
                    command: name,
                    ok: true,
                    head_version: self.head.version(),
                    detail,
                };
                self.ctx.outbox.reply(&self.ctx.outbox.topics.result, &doc);
            }
            Err(e) => self.ctx.outbox.refuse(&publish.topic, None, &e),
        }
        self.ctx.outbox.ack(publish);
    }

    fn execute(&mut self, cmd: Command, key: [u8; 16]) -> Result<serde_json::Value, RequestError> {
        match cmd {
            Command::Forget { label } => {
                let mut head = self.head.clone();
                if !head.forget(&label) {
                    return Err(RequestError::UnknownLabel(label));
                }
                self.samples.forget(&label);
                self.ledger.forget_label(&label);
                self.install(head)?;
                self.record.forget(&label);
                Ok(json!({ "label": label }))
            }
            Command::Reset => {
                let mut head = self.head.clone();
                head.reset();
                self.samples.clear();
                self.ledger.forget_all();
                self.install(head)?;
                self.record.clear();
                self.ctx.dashboard.reset();
                Ok(json!({}))
            }
            Command::Snapshot => {
                self.refresh_predictor();
                self.snapshot()?;
                self.publish_head_and_info();
                Ok(json!({}))
            }
            Command::Rollback { version } => {
                let versions = self.store.head_versions()?;
                let wanted = match version {
                    Some(v) => v,
                    None => *versions
                        .iter()
                        .rev()
                        .find(|v| **v < self.head.version())
                        .ok_or(RequestError::NoSuchVersion(0))?,
                };
                if !versions.contains(&wanted) {
                    return Err(RequestError::NoSuchVersion(wanted));
                }
                let head = self.load_head(&self.store.load_head(wanted)?)?;
                self.ledger.forget_all();
                self.install(head)?;
                Ok(json!({ "restored": wanted, "kept": versions }))
            }
            Command::Algorithm(algorithm) => {
                let mut config = self.head.config().clone();
                config.algorithm = algorithm;
                let mut head = Head::new(
                    &config,
                    self.ctx.backbone.embedding_dim,
                    &self.ctx.backbone.sha256,
                );
                for (label, x) in self.samples.iter() {
                    head.update(x, label)?;
                }
                let retrained = head.samples();
                // Only what the new head was trained from can be unlearned from it.
                self.ledger.retain_among(self.samples.iter());
                self.install(head)?;
                Ok(json!({ "algorithm": algorithm, "retrained_samples": retrained }))
            }
            Command::Import(bytes) => {
                let head = self.load_head(&bytes)?;
                self.ledger.forget_all();
                self.install(head)?;
                Ok(json!({ "classes": self.head.classes().len() }))
            }
            Command::Merge(bytes) => {
                let other = self.load_head(&bytes)?;
                let mut head = self.head.clone();
                head.merge(&other)?;
                self.install(head)?;
                Ok(json!({ "classes": self.head.classes().len() }))
            }
            Command::AdaptReset => {
                if !self.ctx.adapt.reset() {
                    return Err(RequestError::Storage(std::io::Error::other(
                        "the adaptation thread stopped",
                    )));
                }
                Ok(json!({}))
            }
            Command::FleetLeave { peer } => {
                let was_merged = self.fleet.peers.exclude(&peer);
                self.after_change();
                Ok(json!({ "peer": peer, "was_merged": was_merged }))
            }
            Command::Unlearn { id } => self.unlearn(id, None, key),
            Command::Relabel { id, label } => self.unlearn(id, Some(label), key),
        }
    }

    /// Removes the newest learned sample with this id (`to`: learns it under that label
    /// instead), exactly: logged and fsynced, then applied to the head, the stored samples and
    /// the ledger together. Anything refused changes nothing.
    fn unlearn(
        &mut self,
        id: String,
        to: Option<String>,
        key: [u8; 16],
    ) -> Result<serde_json::Value, RequestError> {
        let algorithm = self.head.algorithm();
        if !algorithm.is_exact() {
            return Err(HeadError::Unsupported(format!(
                "unlearn and relabel need an exact learner (ncm, slda or ridge), not {algorithm}"
            ))
            .into());
        }
        let entry = self.ledger.find(&id).map_err(|why| RequestError::NotKept {
            id: id.clone(),
            why,
        })?;
        let (from, x) = (entry.label.clone(), entry.embedding.clone());
        if to.as_deref() == Some(from.as_str()) {
            return Ok(json!({ "id": id, "label": from, "from": from, "changed": false }));
        }
        let head = head_without(&self.head, &x, &from, to.as_deref())?;
        let limit = self.ctx.settings.head.max_classes;
        if to
            .as_ref()
            .is_some_and(|t| self.head.class_stats(t).is_none())
            && head.classes().len() > limit
        {
            return Err(HeadError::TooManyClasses { limit }.into());
        }
        let record = WalRecord::Unlearn(UnlearnRecord {
            seq: self.store.next_seq(),
            unlearn: id.clone(),
            from: from.clone(),
            embedding: F32s(x.clone()),
            to: to.clone(),
            key: Some(key),
        });
        self.store.append(&[record])?;
        // Durable: the head, the stored samples and the ledger change together, as the replay
        // of the record does.
        self.head = head;
        let to_label = to.as_deref();
        stores_without(
            &mut self.samples,
            &mut self.ledger,
            &id,
            &from,
            to_label,
            &x,
        );
        self.dedup.insert(key);
        self.since_snapshot += 1;
        self.after_change();
        self.snapshot_when_due();
        Ok(match to {
            None => json!({ "id": id, "label": from }),
            Some(to) => json!({ "id": id, "label": to, "from": from, "changed": true }),
        })
    }

    fn load_head(&self, bytes: &[u8]) -> Result<Head, RequestError> {
        Ok(Head::from_bytes(
            bytes,
            &super::expect_head(&self.ctx.backbone),
        )?)
    }

    /// Makes `head` current with a version above every earlier one, snapshots and publishes.
    fn install(&mut self, mut head: Head) -> Result<(), RequestError> {
        let limit = self.ctx.settings.head.max_classes;
        if head.classes().len() > limit {
            return Err(HeadError::TooManyClasses { limit }.into());
        }
        let version = self.head.version().max(head.version()) + 1;
        head.set_version(version);
        let previous = std::mem::replace(&mut self.head, head);
        if let Err(e) = self.snapshot() {
            self.head = previous;
            return Err(e.into());
        }
        self.after_change();
        Ok(())
    }

    fn after_change(&mut self) {
        self.classes_to_dashboard();
        self.head_dirty = true;
        self.refresh_predictor();
        self.publish_head_and_info();
    }
}
