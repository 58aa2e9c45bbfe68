fluxio::keys! {
    pub user_id: u64;
    pub user_id: String;
}

fn main() {}
