//! Compile-fail tests for every compile error the macros promise, and pass cases (every
//! stage kind; the fix of a parallel conflict). `.stderr` snapshots depend on the rustc version (one toolchain here);
//! refresh with `TRYBUILD=overwrite cargo test -p fluxio-tests --test ui` and review.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/**/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
