//! `PATH[:NUMBER]` arguments (`check --lora A.gguf:0.5`, `fuse task:0.6`), and
//! [`AdapterSpec`], the `--lora PATH[:SCALE]` of `check` and `merge --measure`.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// Split `PATH[:NUMBER]`. A suffix that is not a number belongs to the path
/// (so `C:\x` or `dir:name` stay paths); the number may be non-finite, which
/// callers refuse with their own message.
pub fn path_and_number(spec: &str) -> (PathBuf, Option<f64>) {
    if let Some((p, s)) = spec.rsplit_once(':') {
        if let Ok(x) = s.parse::<f64>() {
            return (p.into(), Some(x));
        }
    }
    (spec.into(), None)
}

/// A `--lora PATH[:SCALE]` argument.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterSpec {
    pub path: PathBuf,
    pub scale: f32,
}

impl AdapterSpec {
    /// Parse `PATH[:SCALE]`. A suffix that is not a number belongs to the path.
    pub fn parse(spec: &str) -> Result<AdapterSpec> {
        let (path, scale) = path_and_number(spec);
        let scale = scale.unwrap_or(1.0) as f32;
        if !scale.is_finite() {
            return Err(Error::Usage(format!(
                "--lora {spec}: the scale must be finite"
            )));
        }
        Ok(AdapterSpec { path, scale })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_split_off_and_other_suffixes_stay() {
        assert_eq!(path_and_number("a/b:0.6"), ("a/b".into(), Some(0.6)));
        assert_eq!(path_and_number("a:b"), ("a:b".into(), None));
        assert_eq!(path_and_number("x:-1"), ("x".into(), Some(-1.0)));
        assert_eq!(path_and_number("plain"), ("plain".into(), None));
    }
}
