//! `Scoped`: a middleware that applies to some stages only.

use std::any::TypeId;

use super::{Middleware, Next, StageCall};
use crate::stage::{Stage, StageError, StageMeta, StageOutput};
use crate::store::BoxFuture;

/// Which stages a scoped middleware applies to: those in `only` (every stage when it is
/// empty), less those in `except`. Stages are told apart by type, as the cache does: two
/// stages of different modules may share a name.
#[derive(Clone, Default)]
pub(crate) struct Scope {
    only: Vec<(TypeId, &'static str)>,
    except: Vec<(TypeId, &'static str)>,
}

impl Scope {
    /// Whether the middleware applies to a call of stage `meta`.
    pub(crate) fn admits(&self, meta: &StageMeta) -> bool {
        let id = (meta.id)();
        let listed = |list: &[(TypeId, &'static str)]| list.iter().any(|(t, _)| *t == id);
        (self.only.is_empty() || listed(&self.only)) && !listed(&self.except)
    }

    fn names(list: &[(TypeId, &'static str)]) -> Vec<&'static str> {
        list.iter().map(|(_, name)| *name).collect()
    }
}

impl std::fmt::Debug for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scope")
            .field("only", &Self::names(&self.only))
            .field("except", &Self::names(&self.except))
            .finish()
    }
}

/// A middleware applied to some stages of a pipeline only; the others' calls pass through
/// it untouched. Made by [`MiddlewareExt::only`] and [`MiddlewareExt::except`], on any
/// middleware — the built-ins stay on their fast path.
///
/// `Cache::ttl(d).only(price_order)` caches the pricing and nothing else;
/// `Retry::exponential(3).except(charge)` retries every stage but the charge (see the
/// middleware guide, docs/middleware.md).
#[derive(Clone, Debug)]
pub struct Scoped<M> {
    pub(crate) inner: M,
    pub(crate) scope: Scope,
}

impl<M> Scoped<M> {
    /// Applies to `stage` too (with [`only`](MiddlewareExt::only) first: a list of stages).
    #[must_use]
    pub fn only<S: Stage>(mut self, stage: S) -> Self {
        let _ = stage;
        self.scope.only.push((TypeId::of::<S>(), S::META.name));
        self
    }

    /// Leaves `stage` out too.
    #[must_use]
    pub fn except<S: Stage>(mut self, stage: S) -> Self {
        let _ = stage;
        self.scope.except.push((TypeId::of::<S>(), S::META.name));
        self
    }

    /// The middleware inside.
    pub fn inner(&self) -> &M {
        &self.inner
    }
}

impl<M: Middleware> Middleware for Scoped<M> {
    fn handle<'a>(
        &'a self,
        call: StageCall<'a>,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<StageOutput, StageError>> {
        if self.scope.admits(call.meta) {
            self.inner.handle(call, next)
        } else {
            next.run(call)
        }
    }

    fn __fluxio_only(&self) -> &[(TypeId, &'static str)] {
        &self.scope.only
    }
}

/// Scopes any middleware to some stages: `.only(stage)` and `.except(stage)`, with the
/// stage values `#[stage]` defines (so a typo does not compile). Chain them for several
/// stages: `Cache::ttl(d).only(price_order).only(fetch_user)`.
pub trait MiddlewareExt: Middleware + Sized {
    /// Applies only to `stage` (add more with [`Scoped::only`]); other stages' calls pass
    /// through untouched.
    fn only<S: Stage>(self, stage: S) -> Scoped<Self> {
        Scoped {
            inner: self,
            scope: Scope::default(),
        }
        .only(stage)
    }

    /// Applies to every stage but `stage` (leave out more with [`Scoped::except`]).
    fn except<S: Stage>(self, stage: S) -> Scoped<Self> {
        Scoped {
            inner: self,
            scope: Scope::default(),
        }
        .except(stage)
    }
}

impl<M: Middleware> MiddlewareExt for M {}
