#[derive(Clone)]
pub struct NotSerde;

fluxio::keys! { pub thing: NotSerde; }

fn main() {}
