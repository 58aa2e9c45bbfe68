//! Decoding damaged checkpoint bytes allocates no more than the bytes could hold: a length
//! prefix claiming a gigabyte in a 7-byte record is refused before it is allocated. (Its own
//! test binary: it reads the process's peak memory.)

use fluxio::store::format;

/// The process's peak virtual memory, in KiB (Linux).
fn peak_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmPeak:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_lying_length_prefix_is_refused_before_it_is_allocated() {
    // Format version 1, node 0, then a stage name claiming 0x3FFF_FFC0 bytes.
    let entry = [1u8, 0, 252, 0xC0, 0xFF, 0xFF, 0x3F];
    // A value (`String`) and a header, claiming as much.
    let value = [252u8, 0xC0, 0xFF, 0xFF, 0x3F, b'x'];
    let header = [1u8, 1, 252, 0xC0, 0xFF, 0xFF, 0x3F];
    let before = peak_kib();
    let entry_error = format::decode_entry(&entry).unwrap_err();
    let value_error = format::decode_value::<String>(&value).err().unwrap();
    let header_error = format::decode_header(&header).unwrap_err();
    let grew = peak_kib() - before;
    assert!(
        grew < 256 * 1024,
        "decoding a few bytes raised the peak memory by {grew} KiB"
    );
    assert!(entry_error.contains("cut short"), "{entry_error}");
    assert!(header_error.contains("cut short"), "{header_error}");
    assert!(!value_error.is_empty());
}

#[test]
fn large_values_still_decode() {
    // Nothing valid is refused: a 1 MiB string, and a vector of many small integers, which
    // claim more (8 bytes each) than they take (1 byte each).
    fn round_trip<V>(value: V)
    where
        V: PartialEq + std::fmt::Debug + serde::Serialize,
        V: serde::de::DeserializeOwned + Send + Sync + 'static,
    {
        let mut bytes = Vec::new();
        format::encode_value::<V>(&value, &mut bytes).unwrap();
        let back = format::decode_value::<V>(&bytes).unwrap();
        assert_eq!(back.downcast_ref::<V>(), Some(&value));
    }
    round_trip("y".repeat(1 << 20));
    round_trip(vec![7u64; 1 << 20]);
    round_trip(vec![1u128; 1 << 16]);
}
