//! Checkpoints store deltas: a 100-stage run whose context carries a 1 MiB value, written
//! once, stores about 1 MiB in total, not 100 MiB (one snapshot per stage would).
//!
//! Generated shape: `big` writes the value, then 99 stages each read the previous one's key.

use fluxio::prelude::*;

fluxio::keys! {
    pub seed: u64;
    pub blob: Vec<u8>;
    pub k1: u64;
    pub k2: u64;
    pub k3: u64;
    pub k4: u64;
    pub k5: u64;
    pub k6: u64;
    pub k7: u64;
    pub k8: u64;
    pub k9: u64;
    pub k10: u64;
    pub k11: u64;
    pub k12: u64;
    pub k13: u64;
    pub k14: u64;
    pub k15: u64;
    pub k16: u64;
    pub k17: u64;
    pub k18: u64;
    pub k19: u64;
    pub k20: u64;
    pub k21: u64;
    pub k22: u64;
    pub k23: u64;
    pub k24: u64;
    pub k25: u64;
    pub k26: u64;
    pub k27: u64;
    pub k28: u64;
    pub k29: u64;
    pub k30: u64;
    pub k31: u64;
    pub k32: u64;
    pub k33: u64;
    pub k34: u64;
    pub k35: u64;
    pub k36: u64;
    pub k37: u64;
    pub k38: u64;
    pub k39: u64;
    pub k40: u64;
    pub k41: u64;
    pub k42: u64;
    pub k43: u64;
    pub k44: u64;
    pub k45: u64;
    pub k46: u64;
    pub k47: u64;
    pub k48: u64;
    pub k49: u64;
    pub k50: u64;
    pub k51: u64;
    pub k52: u64;
    pub k53: u64;
    pub k54: u64;
    pub k55: u64;
    pub k56: u64;
    pub k57: u64;
    pub k58: u64;
    pub k59: u64;
    pub k60: u64;
    pub k61: u64;
    pub k62: u64;
    pub k63: u64;
    pub k64: u64;
    pub k65: u64;
    pub k66: u64;
    pub k67: u64;
    pub k68: u64;
    pub k69: u64;
    pub k70: u64;
    pub k71: u64;
    pub k72: u64;
    pub k73: u64;
    pub k74: u64;
    pub k75: u64;
    pub k76: u64;
    pub k77: u64;
    pub k78: u64;
    pub k79: u64;
    pub k80: u64;
    pub k81: u64;
    pub k82: u64;
    pub k83: u64;
    pub k84: u64;
    pub k85: u64;
    pub k86: u64;
    pub k87: u64;
    pub k88: u64;
    pub k89: u64;
    pub k90: u64;
    pub k91: u64;
    pub k92: u64;
    pub k93: u64;
    pub k94: u64;
    pub k95: u64;
    pub k96: u64;
    pub k97: u64;
    pub k98: u64;
    pub k99: u64;
    pub k100: u64;
}

macro_rules! step {
    ($name:ident, $from:ident, $to:ident) => {
        #[stage(reads = [$from], writes = [$to])]
        async fn $name($from: &u64) -> u64 {
            $from + 1
        }
    };
}

#[stage(reads = [seed], writes = [blob, k1])]
async fn big(seed: &u64) -> (Vec<u8>, u64) {
    (vec![7u8; 1 << 20], *seed)
}

step!(s2, k1, k2);
step!(s3, k2, k3);
step!(s4, k3, k4);
step!(s5, k4, k5);
step!(s6, k5, k6);
step!(s7, k6, k7);
step!(s8, k7, k8);
step!(s9, k8, k9);
step!(s10, k9, k10);
step!(s11, k10, k11);
step!(s12, k11, k12);
step!(s13, k12, k13);
step!(s14, k13, k14);
step!(s15, k14, k15);
step!(s16, k15, k16);
step!(s17, k16, k17);
step!(s18, k17, k18);
step!(s19, k18, k19);
step!(s20, k19, k20);
step!(s21, k20, k21);
step!(s22, k21, k22);
step!(s23, k22, k23);
step!(s24, k23, k24);
step!(s25, k24, k25);
step!(s26, k25, k26);
step!(s27, k26, k27);
step!(s28, k27, k28);
step!(s29, k28, k29);
step!(s30, k29, k30);
step!(s31, k30, k31);
step!(s32, k31, k32);
step!(s33, k32, k33);
step!(s34, k33, k34);
step!(s35, k34, k35);
step!(s36, k35, k36);
step!(s37, k36, k37);
step!(s38, k37, k38);
step!(s39, k38, k39);
step!(s40, k39, k40);
step!(s41, k40, k41);
step!(s42, k41, k42);
step!(s43, k42, k43);
step!(s44, k43, k44);
step!(s45, k44, k45);
step!(s46, k45, k46);
step!(s47, k46, k47);
step!(s48, k47, k48);
step!(s49, k48, k49);
step!(s50, k49, k50);
step!(s51, k50, k51);
step!(s52, k51, k52);
step!(s53, k52, k53);
step!(s54, k53, k54);
step!(s55, k54, k55);
step!(s56, k55, k56);
step!(s57, k56, k57);
step!(s58, k57, k58);
step!(s59, k58, k59);
step!(s60, k59, k60);
step!(s61, k60, k61);
step!(s62, k61, k62);
step!(s63, k62, k63);
step!(s64, k63, k64);
step!(s65, k64, k65);
step!(s66, k65, k66);
step!(s67, k66, k67);
step!(s68, k67, k68);
step!(s69, k68, k69);
step!(s70, k69, k70);
step!(s71, k70, k71);
step!(s72, k71, k72);
step!(s73, k72, k73);
step!(s74, k73, k74);
step!(s75, k74, k75);
step!(s76, k75, k76);
step!(s77, k76, k77);
step!(s78, k77, k78);
step!(s79, k78, k79);
step!(s80, k79, k80);
step!(s81, k80, k81);
step!(s82, k81, k82);
step!(s83, k82, k83);
step!(s84, k83, k84);
step!(s85, k84, k85);
step!(s86, k85, k86);
step!(s87, k86, k87);
step!(s88, k87, k88);
step!(s89, k88, k89);
step!(s90, k89, k90);
step!(s91, k90, k91);
step!(s92, k91, k92);
step!(s93, k92, k93);
step!(s94, k93, k94);
step!(s95, k94, k95);
step!(s96, k95, k96);
step!(s97, k96, k97);
step!(s98, k97, k98);
step!(s99, k98, k99);
step!(s100, k99, k100);

#[tokio::test]
async fn bytes_written_grow_with_what_stages_write_not_with_the_context() {
    let store = InMemoryStore::new();
    let pipe = pipeline! { big, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13, s14, s15, s16, s17, s18, s19, s20, s21, s22, s23, s24, s25, s26, s27, s28, s29, s30, s31, s32, s33, s34, s35, s36, s37, s38, s39, s40, s41, s42, s43, s44, s45, s46, s47, s48, s49, s50, s51, s52, s53, s54, s55, s56, s57, s58, s59, s60, s61, s62, s63, s64, s65, s66, s67, s68, s69, s70, s71, s72, s73, s74, s75, s76, s77, s78, s79, s80, s81, s82, s83, s84, s85, s86, s87, s88, s89, s90, s91, s92, s93, s94, s95, s96, s97, s98, s99, s100 }.with_store(store.clone());
    let out = pipe.invoke(input! { seed: 1 }).run_id("big").await.unwrap();
    assert_eq!(out[k100], 100);
    assert_eq!(out[blob].len(), 1 << 20);

    let run = store.load("big").await.unwrap().unwrap();
    assert_eq!(run.entries.len(), 100);
    let total: usize = run.header.len() + run.entries.iter().map(Vec::len).sum::<usize>();
    let per_small_entry = run.entries[1..].iter().map(Vec::len).max().unwrap();
    eprintln!(
        "100-stage run with a 1 MiB value: {total} bytes written in all ({:.3} MiB); an entry \
         of a stage writing one u64: {} bytes for `s10` writing `k10`, {per_small_entry} for \
         `s100` writing `k100`",
        total as f64 / (1 << 20) as f64,
        run.entries[9].len(),
    );
    assert!(
        total < (1 << 20) + 10_000,
        "{total} bytes: checkpoints are not deltas"
    );
    assert!(
        per_small_entry < 64,
        "an entry of a stage writing one u64 is {per_small_entry} bytes"
    );

    // And the run resumes from those deltas to the same context.
    let again = pipe.resume("big").await.unwrap();
    assert_eq!(again[blob], out[blob]);
    assert_eq!(again[k100], 100);
}
