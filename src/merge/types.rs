//! The types `merge` writes: `--type same` or one type, and the type each
//! tensor falls back to when it cannot be written in the one asked for.

use crate::gguf::GgmlType;

/// The type merged tensors are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeType {
    /// Each tensor keeps its base type.
    Same,
    /// Every merged tensor becomes this type.
    To(GgmlType),
}

/// The types `--type` accepts besides `same`: those loraguard writes.
pub const MERGE_TYPES: &[GgmlType] = crate::quant::WRITABLE;

impl MergeType {
    /// Parse `same` or a type name (`f16`, `q4_k`, …).
    pub fn parse(s: &str) -> Option<Self> {
        if s.eq_ignore_ascii_case("same") {
            return Some(MergeType::Same);
        }
        GgmlType::from_name(s)
            .filter(|t| MERGE_TYPES.contains(t))
            .map(MergeType::To)
    }
}

/// The type a merged tensor is written in, and the reason for a fallback
/// (llama-quantize's rule, [`crate::quant::writable_type`]).
pub(super) fn out_type(
    base: GgmlType,
    requested: MergeType,
    cols: u64,
) -> (GgmlType, Option<String>) {
    let want = match requested {
        MergeType::Same => base,
        MergeType::To(t) => t,
    };
    let (got, why) = crate::quant::writable_type(want, cols);
    (got, why.map(|w| format!("{w}; wrote {got}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_parse_and_fall_back() {
        assert_eq!(MergeType::parse("same"), Some(MergeType::Same));
        assert_eq!(
            MergeType::parse("q4_k"),
            Some(MergeType::To(GgmlType::Q4_K))
        );
        assert_eq!(MergeType::parse("iq2_xxs"), None);
        assert_eq!(
            out_type(GgmlType::Q4_1, MergeType::Same, 576),
            (GgmlType::Q4_1, None)
        );
        let (t, why) = out_type(GgmlType::Q4_1, MergeType::To(GgmlType::Q4_K), 576);
        assert_eq!(t, GgmlType::Q5_0);
        assert!(why.unwrap().contains("not whole blocks of Q4_K"));
        let (t, why) = out_type(GgmlType::IQ2_XXS, MergeType::Same, 2048);
        assert_eq!(t, GgmlType::Q8_0);
        assert!(why.unwrap().contains("importance matrix"));
        assert_eq!(
            out_type(GgmlType::F32, MergeType::Same, 31).0,
            GgmlType::F32
        );
        assert_eq!(
            out_type(GgmlType::Q8_0, MergeType::Same, 48).0,
            GgmlType::F16
        );
    }
}
