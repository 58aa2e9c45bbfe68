// `#[merge]` takes no arguments.
fluxio::keys! {
    #[merge(append)]
    pub findings: Vec<String>;
}

fn main() {}
