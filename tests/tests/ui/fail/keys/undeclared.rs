fluxio::keys! { pub user_id: u64; }

fn main() {
    let ctx = fluxio::Ctx::new().with(user_id, 42);
    let _ = ctx.get(user_name);
}
