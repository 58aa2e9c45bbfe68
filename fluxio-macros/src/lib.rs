//! Procedural macros of [fluxio](https://docs.rs/fluxio). Depend on `fluxio`, not on this
//! crate: the facade re-exports `keys!`, `#[stage]` and `pipeline!`, and the code they
//! generate names the runtime only through `::fluxio::__private`.

#![doc(test(attr(deny(warnings))))]

mod diag;
mod keys;
mod paths;
mod pipeline;
mod stage;
mod symbol;

use proc_macro::TokenStream;

/// Declares typed context keys.
///
/// Each `NAME: TYPE` declares a key usable as `ctx[NAME]`, `ctx.get(NAME)`,
/// `ctx.set(NAME, value)`, inside `#[stage(reads = [NAME], writes = [NAME])]` and in
/// `input! { NAME: value }`. The value type must be
/// `Clone + Send + Sync + Serialize + DeserializeOwned + 'static`. Doc comments and
/// visibility are kept. Key names must be unique among the keys one pipeline uses.
///
/// ```
/// fluxio::keys! {
///     /// The id the caller asks about.
///     pub user_id: u64;
///     pub greeting: String;
/// }
///
/// let ctx = fluxio::Ctx::new().with(user_id, 42);
/// assert_eq!(ctx[user_id], 42);
/// assert!(!ctx.contains(greeting));
/// ```
///
/// Reading a key with the wrong type does not compile:
///
/// ```compile_fail
/// fluxio::keys! { pub user_id: u64; }
/// let ctx = fluxio::Ctx::new().with(user_id, 42);
/// let name: &String = &ctx[user_id];
/// ```
#[proc_macro]
pub fn keys(input: TokenStream) -> TokenStream {
    keys::expand(input.into()).into()
}

/// Turns a function into a pipeline stage.
///
/// Options: `reads = [keys]`, `writes = [keys]`, `timeout = "5s"`, `name = "..."`,
/// `crate = path` (when fluxio is re-exported under another path).
///
/// * The kind comes from the signature: `async fn` (async stage); plain `fn` (sync stage,
///   run on tokio's blocking pool); `fn` returning `impl Stream<Item = Result<C, E>>`
///   (stream stage); a stage returning `Route` chooses a branch.
/// * Each parameter is named after a key in `reads` and typed `&V` (borrowed from the
///   context) or `V` (cloned). A `Res<T>` parameter receives a resource registered with
///   `.with_resource(..)`. A single `ctx: Ctx` parameter makes a ctx-style stage that
///   returns the new `Ctx`; the context it is given holds its declared `reads` only (its
///   rollback's: its reads and writes).
/// * The return value is the writes: `()` for none, the value for one, a tuple in `writes`
///   order for several; `Result<T, E>` with `E: Into<StageError>` works wherever `T` does.
///
/// The function is replaced by a zero-sized stage value of the same name (what
/// `pipeline!` and `StepHarness::new` take); its body stays callable as `<name>::run(..)`.
///
/// ```
/// use fluxio::prelude::*;
///
/// fluxio::keys! { pub user_id: u64; pub greeting: String; }
///
/// #[stage(reads = [user_id], writes = [greeting], timeout = "2s")]
/// async fn greet(user_id: &u64) -> Result<String, StageError> {
///     Ok(format!("hello, user {user_id}"))
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), fluxio::Error> {
/// assert_eq!(greet::run(&7).await.unwrap(), "hello, user 7");
/// let out = fluxio::testing::StepHarness::new(greet).run(input! { user_id: 7 }).await?;
/// assert_eq!(out[greeting], "hello, user 7");
/// # Ok(()) }
/// ```
///
/// A parameter that is not in `reads` does not compile:
///
/// ```compile_fail
/// use fluxio::prelude::*;
/// fluxio::keys! { pub user_id: u64; pub greeting: String; }
/// #[stage(writes = [greeting])]
/// async fn greet(user_id: &u64) -> String { format!("{user_id}") }
/// ```
#[proc_macro_attribute]
pub fn stage(args: TokenStream, item: TokenStream) -> TokenStream {
    stage::expand(args.into(), item.into()).into()
}

/// Declares a pipeline: a comma-separated sequence of nodes.
///
/// A node is a stage; `parallel { a, b, ... }` (an explicit fork and merge); a route stage
/// followed by `=> { "label" => [nodes], ... }`; or any other expression producing a
/// `Pipeline` (a nested pipeline, e.g. `sub.clone()` or `&sub`).
///
/// In a sequence, a stage waits for an earlier one only when it reads what that one writes,
/// writes what it writes, or writes what it reads; independent stages run concurrently. The
/// dependency graph is evaluated at compile time. Two stages of one `parallel` block that
/// write the same key, or where one reads what the other writes, do not compile.
///
/// ```
/// use fluxio::prelude::*;
///
/// fluxio::keys! { pub n: u64; pub doubled: u64; pub squared: u64; }
///
/// #[stage(reads = [n], writes = [doubled])]
/// async fn double(n: &u64) -> u64 { n * 2 }
///
/// #[stage(reads = [n], writes = [squared])]
/// async fn square(n: &u64) -> u64 { n * n }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), fluxio::Error> {
/// let pipe = pipeline! { parallel { double, square } };
/// let out = pipe.invoke(input! { n: 5 }).await?;
/// assert_eq!((out[doubled], out[squared]), (10, 25));
/// # Ok(()) }
/// ```
///
/// Stages of one `parallel` block that write the same key do not compile:
///
/// ```compile_fail
/// use fluxio::prelude::*;
/// fluxio::keys! { pub n: u64; }
/// #[stage(writes = [n])]
/// async fn one() -> u64 { 1 }
/// #[stage(writes = [n])]
/// async fn two() -> u64 { 2 }
/// let pipe = pipeline! { parallel { one, two } };
/// ```
#[proc_macro]
pub fn pipeline(input: TokenStream) -> TokenStream {
    pipeline::expand(input.into()).into()
}
