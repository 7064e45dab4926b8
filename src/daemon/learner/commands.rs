//! The learner's commands (`{root}/cmd/<name>`), executed in arrival order; each replies on
//! `{root}/result` or `{root}/error` and is acknowledged once its effect is durable.

use rumqttc::Publish;
use serde_json::json;

use super::Learner;
use crate::daemon::error::RequestError;
use crate::daemon::reply::CommandResult;
use crate::daemon::request::Command;
use crate::head::{Head, HeadError};

impl Learner {
    /// Runs a parsed command (or answers why it could not be parsed), then acknowledges it.
    pub(super) fn command(&mut self, publish: &Publish, cmd: Result<Command, RequestError>) {
        let result = cmd.and_then(|c| {
            let name = c.kind().name();
            self.execute(c).map(|detail| (name, detail))
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

    fn execute(&mut self, cmd: Command) -> Result<serde_json::Value, RequestError> {
        match cmd {
            Command::Forget { label } => {
                let mut head = self.head.clone();
                if !head.forget(&label) {
                    return Err(RequestError::UnknownLabel(label));
                }
                self.samples.forget(&label);
                self.install(head)?;
                self.record.forget(&label);
                Ok(json!({ "label": label }))
            }
            Command::Reset => {
                let mut head = self.head.clone();
                head.reset();
                self.samples.clear();
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
                self.install(head)?;
                Ok(json!({ "algorithm": algorithm, "retrained_samples": retrained }))
            }
            Command::Import(bytes) => {
                let head = self.load_head(&bytes)?;
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
        }
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
