// Not public API. Used by fluxio-macros output; may change in any release.

pub use core::time::Duration;

pub use fluxio_core::access::Access;
pub use fluxio_core::middleware::Engine;
pub use fluxio_core::plan::{NodeDesc, NodeSpec, dep_matrix};
pub use fluxio_core::run::{RunFuture, Scheduler, drive};
pub use fluxio_core::support::{
    BoxedErrorKind, ErrorTag, FallbackResult, FromRead, IntoPipeline, RollbackResult,
    StageErrorKind, Written, check_distinct_name, check_input_keys, check_parallel,
    check_route_use, check_stage_name, drive_stream, meta_of, missing_resource, run_blocking,
};
pub use fluxio_core::{
    Ctx, Key, KeyDesc, Pipeline, Res, ResourceDesc, Route, RunInfo, Stage, StageEnv, StageError,
    StageFuture, StageKind, StageMeta, StageOutput, Writes, ctx_view, read_key,
};
