fluxio::keys! { pub n: u64; pub label: String; }

mod other {
    fluxio::keys! { pub n: i32; }
}

fn main() {
    let _twice = fluxio::input! { n: 1, label: "a".into(), n: 2 };
    let _same_name = fluxio::input! { n: 1, other::n: 2 };
}
