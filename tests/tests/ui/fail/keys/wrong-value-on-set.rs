fluxio::keys! { pub user_id: u64; }

fn main() {
    let _ = fluxio::input! { user_id: "forty-two".to_string() };
}
