//! Structured run events, for users who persist or forward them.

use std::time::Duration;

use serde::Serialize;

use crate::callback::{Callback, StageEvent};
use crate::ctx::Ctx;
use crate::error::Error;

/// One thing that happened in a run, named with the taxonomy of event-driven pipeline
/// systems: `pipeline.started`, `pipeline.completed`, `pipeline.failed`,
/// `pipeline.cancelled`, `pipeline.resumed` (a durable run resuming a stored one),
/// `stage.started`, `stage.completed`, `stage.failed`,
/// `stage.skipped`, and `stage.cancelled` (a started stage dropped before it ended, so
/// that every `stage.started` has its end) — and, for recovery, `stage.retrying`,
/// `stage.fallback`, `stage.rolled_back` and `stage.rollback_failed`. Serializable, so it
/// can be stored or sent as it is; durations serialize as milliseconds (`duration_ms`,
/// fractional).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type")]
#[non_exhaustive]
pub enum Event {
    /// `pipeline.started`
    #[serde(rename = "pipeline.started")]
    PipelineStarted {
        /// The run.
        run_id: String,
    },
    /// `pipeline.completed`
    #[serde(rename = "pipeline.completed")]
    PipelineCompleted {
        /// The run.
        run_id: String,
        /// How long it took.
        #[serde(rename = "duration_ms", serialize_with = "millis")]
        duration: Duration,
    },
    /// `pipeline.failed`
    #[serde(rename = "pipeline.failed")]
    PipelineFailed {
        /// The run.
        run_id: String,
        /// The error's message.
        error: String,
        /// How long it ran.
        #[serde(rename = "duration_ms", serialize_with = "millis")]
        duration: Duration,
    },
    /// `pipeline.cancelled`: the run was dropped before it ended.
    #[serde(rename = "pipeline.cancelled")]
    PipelineCancelled {
        /// The run.
        run_id: String,
    },
    /// `pipeline.resumed`: the run is a resume of a stored one (after `pipeline.started`,
    /// before any stage).
    #[serde(rename = "pipeline.resumed")]
    PipelineResumed {
        /// The run.
        run_id: String,
        /// The stages its checkpoint holds as done: they do not run again.
        finished: Vec<&'static str>,
    },
    /// `stage.started`
    #[serde(rename = "stage.started")]
    StageStarted {
        /// The run.
        run_id: String,
        /// The stage.
        stage: &'static str,
        /// The attempt, from 1.
        attempt: u32,
    },
    /// `stage.completed`
    #[serde(rename = "stage.completed")]
    StageCompleted {
        /// The run.
        run_id: String,
        /// The stage.
        stage: &'static str,
        /// The attempt, from 1.
        attempt: u32,
        /// How long it took.
        #[serde(rename = "duration_ms", serialize_with = "millis")]
        duration: Duration,
    },
    /// `stage.failed`
    #[serde(rename = "stage.failed")]
    StageFailed {
        /// The run.
        run_id: String,
        /// The stage.
        stage: &'static str,
        /// The attempt, from 1.
        attempt: u32,
        /// The error's message.
        error: String,
        /// How long it ran.
        #[serde(rename = "duration_ms", serialize_with = "millis")]
        duration: Duration,
    },
    /// `stage.cancelled`: the stage had started, and was dropped before it ended (another
    /// stage failed the run, or the run was dropped).
    #[serde(rename = "stage.cancelled")]
    StageCancelled {
        /// The run.
        run_id: String,
        /// The stage.
        stage: &'static str,
        /// The attempt, from 1.
        attempt: u32,
        /// How long it ran.
        #[serde(rename = "duration_ms", serialize_with = "millis")]
        duration: Duration,
    },
    /// `stage.skipped`
    #[serde(rename = "stage.skipped")]
    StageSkipped {
        /// The run.
        run_id: String,
        /// The stage.
        stage: &'static str,
        /// Why.
        reason: String,
    },
    /// `stage.retrying`: `Retry` calls the stage again after `delay` (the attempt that
    /// failed, and its error).
    #[serde(rename = "stage.retrying")]
    StageRetrying {
        /// The run.
        run_id: String,
        /// The stage.
        stage: &'static str,
        /// The attempt that failed, from 1.
        attempt: u32,
        /// Its error's message.
        error: String,
        /// The wait before the next attempt.
        #[serde(rename = "delay_ms", serialize_with = "millis")]
        delay: Duration,
    },
    /// `stage.fallback`: the stage failed (after its retries) and its fallback produces its
    /// writes instead; the stage then ends with `stage.completed` or `stage.failed`.
    #[serde(rename = "stage.fallback")]
    StageFallback {
        /// The run.
        run_id: String,
        /// The stage.
        stage: &'static str,
        /// The last attempt, from 1.
        attempt: u32,
        /// The stage's error's message.
        error: String,
    },
    /// `stage.rolled_back`: the run failed and this finished stage's rollback ran (before
    /// `pipeline.failed`). The rollbacks of a nested pipeline's stages have none: the
    /// outer run sees the nested pipeline as one node.
    #[serde(rename = "stage.rolled_back")]
    StageRolledBack {
        /// The run.
        run_id: String,
        /// The stage.
        stage: &'static str,
    },
    /// `stage.rollback_failed`: the run failed and this finished stage's rollback failed
    /// (the run still returns its own failure; a durable run's stored error text lists
    /// the failed rollbacks).
    #[serde(rename = "stage.rollback_failed")]
    StageRollbackFailed {
        /// The run.
        run_id: String,
        /// The stage.
        stage: &'static str,
        /// The rollback's error's message.
        error: String,
    },
}

/// A duration as fractional milliseconds: what event stores and dashboards read, rather
/// than serde's `{"secs", "nanos"}`.
fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(as_millis(*d))
}

/// `d` in milliseconds, as the nearest `f64` to the exact value: 34,134 ns is `0.034134`
/// (`as_secs_f64() * 1e3` gives `0.034134000000000005`, which a stored event would keep).
fn as_millis(d: Duration) -> f64 {
    d.as_nanos() as f64 / 1e6
}

/// An [`Event`] with the wall-clock time it happened: what to store when the events of
/// many runs and processes go to one place. It serializes as the event's own fields plus
/// `at_ms`, milliseconds since the Unix epoch:
/// `{"at_ms":1764012345678,"type":"stage.started","run_id":"order-7","stage":"charge","attempt":1}`.
///
/// ```
/// # use fluxio_core::events::Event;
/// let stamped = Event::PipelineStarted { run_id: "order-7".into() }.stamped();
/// assert!(stamped.at_ms > 1_700_000_000_000);
/// assert_eq!(stamped.event.name(), "pipeline.started");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Stamped {
    /// When, in milliseconds since the Unix epoch (0 on a clock set before it).
    pub at_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
}

impl Event {
    /// This event, stamped with the time now: call it in an [`EventSink`]'s function,
    /// which runs as the event happens.
    pub fn stamped(self) -> Stamped {
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Stamped { at_ms, event: self }
    }

    /// The event's name: `pipeline.started`, `stage.completed`, ...
    pub fn name(&self) -> &'static str {
        match self {
            Event::PipelineStarted { .. } => "pipeline.started",
            Event::PipelineCompleted { .. } => "pipeline.completed",
            Event::PipelineFailed { .. } => "pipeline.failed",
            Event::PipelineCancelled { .. } => "pipeline.cancelled",
            Event::PipelineResumed { .. } => "pipeline.resumed",
            Event::StageStarted { .. } => "stage.started",
            Event::StageCompleted { .. } => "stage.completed",
            Event::StageFailed { .. } => "stage.failed",
            Event::StageSkipped { .. } => "stage.skipped",
            Event::StageCancelled { .. } => "stage.cancelled",
            Event::StageRetrying { .. } => "stage.retrying",
            Event::StageFallback { .. } => "stage.fallback",
            Event::StageRolledBack { .. } => "stage.rolled_back",
            Event::StageRollbackFailed { .. } => "stage.rollback_failed",
        }
    }

    /// The stage a `stage.*` event is about (`None` for a `pipeline.*` event).
    ///
    /// ```
    /// # use fluxio_core::events::Event;
    /// let e = Event::StageSkipped {
    ///     run_id: "r1".into(),
    ///     stage: "send_email",
    ///     reason: "maintenance".into(),
    /// };
    /// assert_eq!(e.stage(), Some("send_email"));
    /// assert_eq!(Event::PipelineStarted { run_id: "r1".into() }.stage(), None);
    /// ```
    pub fn stage(&self) -> Option<&'static str> {
        match self {
            Event::StageStarted { stage, .. }
            | Event::StageCompleted { stage, .. }
            | Event::StageFailed { stage, .. }
            | Event::StageSkipped { stage, .. }
            | Event::StageCancelled { stage, .. }
            | Event::StageRetrying { stage, .. }
            | Event::StageFallback { stage, .. }
            | Event::StageRolledBack { stage, .. }
            | Event::StageRollbackFailed { stage, .. } => Some(stage),
            Event::PipelineStarted { .. }
            | Event::PipelineCompleted { .. }
            | Event::PipelineFailed { .. }
            | Event::PipelineCancelled { .. }
            | Event::PipelineResumed { .. } => None,
        }
    }

    /// The run the event belongs to.
    pub fn run_id(&self) -> &str {
        match self {
            Event::PipelineStarted { run_id }
            | Event::PipelineCompleted { run_id, .. }
            | Event::PipelineFailed { run_id, .. }
            | Event::PipelineCancelled { run_id }
            | Event::PipelineResumed { run_id, .. }
            | Event::StageStarted { run_id, .. }
            | Event::StageCompleted { run_id, .. }
            | Event::StageFailed { run_id, .. }
            | Event::StageSkipped { run_id, .. }
            | Event::StageCancelled { run_id, .. }
            | Event::StageRetrying { run_id, .. }
            | Event::StageFallback { run_id, .. }
            | Event::StageRolledBack { run_id, .. }
            | Event::StageRollbackFailed { run_id, .. } => run_id,
        }
    }
}

/// A callback that turns a run's lifecycle into [`Event`]s and hands each to a function —
/// to store them, publish them, or keep them for a test.
///
/// ```
/// # use fluxio_core::events::{Event, EventSink};
/// # use std::sync::{Arc, Mutex};
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let sink = EventSink::new({
///     let seen = seen.clone();
///     move |event: Event| seen.lock().unwrap().push(event.name())
/// });
/// # let _ = sink;
/// ```
pub struct EventSink<F> {
    emit: F,
}

impl<F> std::fmt::Debug for EventSink<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSink").finish_non_exhaustive()
    }
}

impl<F: Fn(Event) + Send + Sync + 'static> EventSink<F> {
    /// A sink that calls `emit` for every event.
    pub fn new(emit: F) -> Self {
        EventSink { emit }
    }
}

impl<F: Fn(Event) + Send + Sync + 'static> Callback for EventSink<F> {
    fn on_run_start(&self, run_id: &str) {
        (self.emit)(Event::PipelineStarted {
            run_id: run_id.into(),
        });
    }
    fn on_run_end(&self, run_id: &str, outcome: Result<&Ctx, &Error>, elapsed: Duration) {
        (self.emit)(match outcome {
            Ok(_) => Event::PipelineCompleted {
                run_id: run_id.into(),
                duration: elapsed,
            },
            Err(e) => Event::PipelineFailed {
                run_id: run_id.into(),
                error: e.to_string(),
                duration: elapsed,
            },
        });
    }
    fn on_run_cancelled(&self, run_id: &str) {
        (self.emit)(Event::PipelineCancelled {
            run_id: run_id.into(),
        });
    }
    fn on_run_resumed(&self, run_id: &str, finished: &[&'static str]) {
        (self.emit)(Event::PipelineResumed {
            run_id: run_id.into(),
            finished: finished.to_vec(),
        });
    }
    fn on_stage_start(&self, e: &StageEvent<'_>) {
        (self.emit)(Event::StageStarted {
            run_id: e.run_id.into(),
            stage: e.stage,
            attempt: e.attempt,
        });
    }
    fn on_stage_end(&self, e: &StageEvent<'_>, elapsed: Duration) {
        (self.emit)(Event::StageCompleted {
            run_id: e.run_id.into(),
            stage: e.stage,
            attempt: e.attempt,
            duration: elapsed,
        });
    }
    fn on_stage_error(&self, e: &StageEvent<'_>, error: &Error, elapsed: Duration) {
        (self.emit)(Event::StageFailed {
            run_id: e.run_id.into(),
            stage: e.stage,
            attempt: e.attempt,
            error: error.to_string(),
            duration: elapsed,
        });
    }
    fn on_stage_skip(&self, e: &StageEvent<'_>, reason: &str) {
        (self.emit)(Event::StageSkipped {
            run_id: e.run_id.into(),
            stage: e.stage,
            reason: reason.into(),
        });
    }
    fn on_stage_cancelled(&self, e: &StageEvent<'_>, elapsed: Duration) {
        (self.emit)(Event::StageCancelled {
            run_id: e.run_id.into(),
            stage: e.stage,
            attempt: e.attempt,
            duration: elapsed,
        });
    }
    fn on_retry(&self, e: &StageEvent<'_>, error: &crate::StageError, delay: Duration) {
        (self.emit)(Event::StageRetrying {
            run_id: e.run_id.into(),
            stage: e.stage,
            attempt: e.attempt,
            error: error.to_string(),
            delay,
        });
    }
    fn on_fallback(&self, e: &StageEvent<'_>, error: &Error) {
        (self.emit)(Event::StageFallback {
            run_id: e.run_id.into(),
            stage: e.stage,
            attempt: e.attempt,
            error: error.to_string(),
        });
    }
    fn on_rollback(&self, e: &StageEvent<'_>, error: Option<&Error>) {
        (self.emit)(match error {
            None => Event::StageRolledBack {
                run_id: e.run_id.into(),
                stage: e.stage,
            },
            Some(error) => Event::StageRollbackFailed {
                run_id: e.run_id.into(),
                stage: e.stage,
                error: error.to_string(),
            },
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_serialize_as_the_nearest_milliseconds() {
        assert_eq!(
            as_millis(Duration::from_nanos(34_134)).to_string(),
            "0.034134"
        );
        assert_eq!(as_millis(Duration::from_millis(2_000)).to_string(), "2000");
        assert_eq!(
            as_millis(Duration::new(12, 345_678_901)).to_string(),
            "12345.678901"
        );
    }
}
