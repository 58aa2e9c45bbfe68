//! The executor: runs a plan's nodes as soon as their dependencies finish.
//!
//! Stage futures are polled on the run's own task (no spawn per stage): a newly ready stage
//! is polled once inline, and only stages that are still pending go into a
//! `FuturesUnordered`. Sync stages move to tokio's blocking pool inside their own future.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use super::Pipeline;
use crate::callback::{Callback, StageEvent};
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::plan::{Exec, Plan};
use crate::stage::{ChunkSink, RawChunk, StageEnv, StageFuture, StageOutput, Writes};

/// Starts a run of `pipe` on `input`; chunks go to `chunks` when someone streams them.
pub(crate) async fn run(
    pipe: &Pipeline,
    input: Ctx,
    run_id: Option<String>,
    chunks: Option<tokio::sync::mpsc::Sender<RawChunk>>,
) -> Result<Ctx> {
    let env = StageEnv {
        resources: pipe.resources.clone(),
        chunks: ChunkSink::new(chunks),
    };
    if pipe.callbacks.is_empty() {
        return execute(&pipe.plan, input, &env, None).await;
    }
    let run_id = run_id.unwrap_or_else(fresh_run_id);
    let obs = Observers {
        callbacks: &pipe.callbacks,
        run_id: &run_id,
    };
    let started = Instant::now();
    obs.each(|c| c.on_run_start(&run_id));
    let result = execute(&pipe.plan, input, &env, Some(&obs)).await;
    obs.each(|c| c.on_run_end(&run_id, result.as_ref(), started.elapsed()));
    result
}

fn fresh_run_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "run-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

struct Observers<'a> {
    callbacks: &'a [Arc<dyn Callback>],
    run_id: &'a str,
}

impl Observers<'_> {
    fn each(&self, f: impl Fn(&dyn Callback)) {
        for c in self.callbacks {
            f(&**c);
        }
    }

    fn event(&self, plan: &Plan, i: usize) -> StageEvent<'_> {
        let meta = &plan.nodes[i].meta;
        StageEvent {
            run_id: self.run_id,
            stage: meta.name,
            kind: meta.kind,
            attempt: 1,
        }
    }
}

/// Checks what must hold before any stage runs: inputs present, resources registered.
fn preflight(plan: &Plan, input: &Ctx, env: &StageEnv) -> Result<()> {
    for key in &plan.input_descs {
        if !input.contains_name(key.name) {
            return Err(Error::MissingInput { key: key.name });
        }
    }
    for node in &plan.nodes {
        for res in node.meta.resources {
            if !env.resources.contains((res.type_id)()) {
                return Err(Error::MissingResource {
                    stage: node.meta.name,
                    type_name: (res.type_name)(),
                });
            }
        }
    }
    Ok(())
}

/// One stage call in flight: catches panics and enforces the stage's timeout.
pub(crate) struct Task {
    idx: u32,
    stage: &'static str,
    fut: StageFuture,
    deadline: Option<(Pin<Box<tokio::time::Sleep>>, Duration)>,
}

impl Task {
    pub(crate) fn new(
        idx: u32,
        stage: &'static str,
        fut: StageFuture,
        timeout: Option<Duration>,
    ) -> Self {
        let deadline = timeout.map(|after| (Box::pin(tokio::time::sleep(after)), after));
        Task {
            idx,
            stage,
            fut,
            deadline,
        }
    }
}

impl Future for Task {
    type Output = (u32, Result<StageOutput>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| this.fut.as_mut().poll(cx)));
        let out = match polled {
            Ok(Poll::Ready(Ok(out))) => Ok(out),
            Ok(Poll::Ready(Err(e))) => Err(e.into_run_error(this.stage)),
            Err(payload) => Err(panic_error(this.stage, payload)),
            Ok(Poll::Pending) => match &mut this.deadline {
                Some((sleep, after)) => match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Err(Error::Timeout {
                        stage: this.stage,
                        after: *after,
                    }),
                    Poll::Pending => return Poll::Pending,
                },
                None => return Poll::Pending,
            },
        };
        Poll::Ready((this.idx, out))
    }
}

pub(crate) fn panic_error(stage: &'static str, payload: Box<dyn std::any::Any + Send>) -> Error {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".to_string());
    Error::Stage {
        stage,
        source: Arc::from(
            crate::stage::StageError::msg(format!("stage panicked: {text}")).into_inner(),
        ),
    }
}

const PENDING: u8 = 0;
const RUNNING: u8 = 1;
const DONE: u8 = 2;
const SKIPPED: u8 = 3;

fn start(plan: &Plan, i: usize, ctx: &Ctx, env: &StageEnv) -> Task {
    let node = &plan.nodes[i];
    let fut: StageFuture = match &node.exec {
        Exec::Stage(stage) => stage.call(ctx, env),
        Exec::Pipeline(sub) => {
            let sub = sub.clone();
            let input = ctx.clone();
            let env = env.clone();
            let writes = node.writes.clone();
            Box::pin(async move {
                let out = Box::pin(execute(&sub.plan, input.clone(), &env, None)).await?;
                let mut w = Writes::with_capacity(writes.len());
                for name in out.written_since(&input) {
                    if writes.iter().any(|k| k.name == name) {
                        w.push_slot(
                            name,
                            out.slot(name).cloned().expect("written key is present"),
                        );
                    }
                }
                Ok(StageOutput::Writes(w))
            })
        }
    };
    Task::new(i as u32, node.meta.name, fut, node.meta.timeout)
}

/// Runs `plan` on `input` to completion.
async fn execute(
    plan: &Plan,
    input: Ctx,
    env: &StageEnv,
    obs: Option<&Observers<'_>>,
) -> Result<Ctx> {
    preflight(plan, &input, env)?;
    let n = plan.nodes.len();
    let mut ctx = input;
    let mut remaining = plan.dep_counts.clone();
    let mut state = vec![PENDING; n];
    let mut ready: VecDeque<u32> = plan.roots.iter().copied().collect();
    let mut running: FuturesUnordered<Task> = FuturesUnordered::new();
    let mut started_at: Vec<Option<Instant>> = if obs.is_some() {
        vec![None; n]
    } else {
        Vec::new()
    };

    loop {
        while let Some(i) = ready.pop_front() {
            let i = i as usize;
            if state[i] != PENDING {
                continue;
            }
            state[i] = RUNNING;
            if let Some(obs) = obs {
                started_at[i] = Some(Instant::now());
                let ev = obs.event(plan, i);
                obs.each(|c| c.on_stage_start(&ev));
            }
            let mut task = start(plan, i, &ctx, env);
            match poll_fn(|cx| Poll::Ready(Pin::new(&mut task).poll(cx))).await {
                Poll::Ready((i, out)) => complete(
                    plan,
                    i as usize,
                    out,
                    &mut ctx,
                    &mut state,
                    &mut remaining,
                    &mut ready,
                    obs,
                    &started_at,
                )?,
                Poll::Pending => running.push(task),
            }
        }
        match running.next().await {
            Some((i, out)) => complete(
                plan,
                i as usize,
                out,
                &mut ctx,
                &mut state,
                &mut remaining,
                &mut ready,
                obs,
                &started_at,
            )?,
            None => break,
        }
    }
    debug_assert!(
        state.iter().all(|&s| s == DONE || s == SKIPPED),
        "every node ran or was skipped"
    );
    Ok(ctx)
}

#[allow(
    clippy::too_many_arguments,
    reason = "the executor's state, passed apart to keep borrows simple"
)]
fn complete(
    plan: &Plan,
    i: usize,
    out: Result<StageOutput>,
    ctx: &mut Ctx,
    state: &mut [u8],
    remaining: &mut [u32],
    ready: &mut VecDeque<u32>,
    obs: Option<&Observers<'_>>,
    started_at: &[Option<Instant>],
) -> Result<()> {
    let elapsed = || {
        started_at
            .get(i)
            .copied()
            .flatten()
            .map(|t| t.elapsed())
            .unwrap_or_default()
    };
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            if let Some(obs) = obs {
                let ev = obs.event(plan, i);
                obs.each(|c| c.on_stage_error(&ev, &e, elapsed()));
            }
            return Err(e);
        }
    };
    match out {
        StageOutput::Writes(w) => w.apply(ctx),
        StageOutput::Route(route) => {
            let node = &plan.nodes[i];
            let Some(chosen) = node.labels.iter().position(|l| *l == route.label()) else {
                let e = Error::UnknownRoute {
                    stage: node.meta.name,
                    label: route.label().to_string(),
                };
                if let Some(obs) = obs {
                    let ev = obs.event(plan, i);
                    obs.each(|c| c.on_stage_error(&ev, &e, elapsed()));
                }
                return Err(e);
            };
            let members = &plan.branch_members[i];
            for (l, nodes) in members.iter().enumerate() {
                if l != chosen {
                    for &k in nodes {
                        state[k as usize] = SKIPPED;
                    }
                }
            }
            for (l, nodes) in members.iter().enumerate() {
                if l != chosen {
                    for &k in nodes {
                        if let Some(obs) = obs {
                            let ev = obs.event(plan, k as usize);
                            let reason =
                                format!("route `{}` chose `{}`", node.meta.name, route.label());
                            obs.each(|c| c.on_stage_skip(&ev, &reason));
                        }
                        release(plan, k as usize, state, remaining, ready);
                    }
                }
            }
        }
    }
    state[i] = DONE;
    if let Some(obs) = obs {
        let ev = obs.event(plan, i);
        obs.each(|c| c.on_stage_end(&ev, elapsed()));
    }
    release(plan, i, state, remaining, ready);
    Ok(())
}

fn release(plan: &Plan, i: usize, state: &[u8], remaining: &mut [u32], ready: &mut VecDeque<u32>) {
    for &d in &plan.dependents[i] {
        let r = &mut remaining[d as usize];
        *r -= 1;
        if *r == 0 && state[d as usize] == PENDING {
            ready.push_back(d);
        }
    }
}
