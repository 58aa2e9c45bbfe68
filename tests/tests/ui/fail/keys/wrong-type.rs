fluxio::keys! { pub user_id: u64; }

fn main() {
    let ctx = fluxio::Ctx::new().with(user_id, 42);
    let name: &String = &ctx[user_id];
    let _ = name;
}
