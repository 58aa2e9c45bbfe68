// `Stage`s implemented by hand (`#[stage]` checks its own names): one whose name holds
// `/`, which separates nested pipelines in idempotency keys, and one with a blank name.
use fluxio::prelude::*;
use fluxio::{StageKind, StageMeta, StageOutput, Writes};

#[allow(non_camel_case_types)]
struct legacy;

impl fluxio::Stage for legacy {
    const META: StageMeta = StageMeta {
        name: "billing/charge",
        id: std::any::TypeId::of::<legacy>,
        kind: StageKind::Async,
        access: fluxio::__private::Access::new(&[], &[]),
        timeout: None,
        resources: &[],
    };
    fn call(
        &self,
        _: &Ctx,
        _: &fluxio::__private::StageEnv,
    ) -> impl std::future::Future<Output = Result<StageOutput, StageError>> + Send + 'static + use<>
    {
        async { Ok(StageOutput::Writes(Writes::none())) }
    }
}

#[allow(non_camel_case_types)]
struct blank;

impl fluxio::Stage for blank {
    const META: StageMeta = StageMeta {
        name: " ",
        ..<legacy as fluxio::Stage>::META
    };
    fn call(
        &self,
        ctx: &Ctx,
        env: &fluxio::__private::StageEnv,
    ) -> impl std::future::Future<Output = Result<StageOutput, StageError>> + Send + 'static + use<>
    {
        legacy.call(ctx, env)
    }
}

fn main() {
    let _ = pipeline! { legacy };
    let _ = pipeline! { blank };
}
