//! The one adapter abstraction (issue 20): a PEFT adapter opened for a base
//! reads in GGUF names and layout from memory, exactly as the F32 GGUF that
//! `convert` writes of it reads.

use loraguard::adapter::AdapterSource;
use loraguard::convert::OutType;

use crate::common::*;

#[test]
fn a_peft_adapter_opened_for_a_base_reads_as_its_f32_conversion() {
    let dir = tempfile::tempdir().unwrap();
    // Plain, GQA k-only, rsLoRA with patterns (scales baked into B),
    // fan_in_fan_out (transposed PEFT storage).
    for name in ["plain", "gqa-k-only", "rslora-patterns", "fan-in-fan-out"] {
        let peft = tiny_adapter(name);
        let (gguf, _) = convert_to(&peft, &tiny_base(), dir.path(), OutType::F32);
        let memory = AdapterSource::open(&peft, Some(&tiny_base())).unwrap();
        let file = AdapterSource::open(&gguf, None).unwrap();
        assert!(matches!(memory, AdapterSource::Converted { .. }));
        assert_eq!(memory.modules(), file.modules(), "{name}");
        assert_eq!(memory.architecture(), file.architecture());
        assert_eq!(memory.max_rank(), file.max_rank());
        for m in memory.modules() {
            assert_eq!(memory.pair_shape(&m), file.pair_shape(&m), "{name} {m}");
            let (x, y) = (memory.load(&m).unwrap(), file.load(&m).unwrap());
            assert_eq!(x.scale, y.scale, "{name} {m}");
            assert_eq!(x.b, y.b, "{name} {m}");
            assert_eq!(x.a, y.a, "{name} {m}");
        }
    }
}

#[test]
fn the_embedding_and_dropped_tensors_read_as_in_the_conversion() {
    let dir = tempfile::tempdir().unwrap();
    for (name, drop) in [("embed-head", false), ("modules-to-save", true)] {
        let peft = tiny_adapter(name);
        let (memory, dropped) = AdapterSource::open_for(&peft, Some(&tiny_base()), drop).unwrap();
        let mut o = opts(OutType::F32);
        o.drop_unsupported = drop;
        let out = dir.path().join(format!("{name}.gguf"));
        let r =
            loraguard::convert::convert(&peft, &tiny_base(), Some(&out), &o, &|_, _| {}).unwrap();
        let names: Vec<String> = r.dropped.iter().map(|t| t.name.clone()).collect();
        assert_eq!(dropped, names, "{name}");
        assert_eq!(drop, !dropped.is_empty(), "{name}: {dropped:?}");
        if drop {
            // Not dropped unless asked: refused, as convert refuses it.
            assert!(AdapterSource::open(&peft, Some(&tiny_base())).is_err());
        } else {
            assert!(memory.modules().iter().any(|m| m == "token_embd.weight"));
        }
        let file = AdapterSource::open(&out, None).unwrap();
        assert_eq!(memory.modules(), file.modules(), "{name}");
        for m in memory.modules() {
            let (x, y) = (memory.load(&m).unwrap(), file.load(&m).unwrap());
            assert_eq!((x.scale, &x.b, &x.a), (y.scale, &y.b, &y.a), "{name} {m}");
        }
    }
}
