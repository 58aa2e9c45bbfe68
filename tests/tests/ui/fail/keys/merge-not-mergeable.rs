// `#[merge]` on a key whose type has no `Merge`.
fluxio::keys! {
    #[merge]
    pub total: u64;
}

fn main() {}
