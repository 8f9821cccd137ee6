//! What `fuse` is asked to do: the method, the inputs and their weights,
//! the options.

use std::path::PathBuf;

use crate::convert::{ConvertOptions, OutType};
use crate::error::{Error, Result};
use crate::projection::Selection;

use super::{Merge, Side, Weights};

/// How adapters are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Cat,
    Linear,
    Svd,
    Ties,
    DareLinear,
    DareTies,
    MagnitudePrune,
    TiesSvd,
    DareLinearSvd,
    DareTiesSvd,
    MagnitudePruneSvd,
    /// cat, after removing from every other input's update its component in
    /// the protected input's column space, row space or both.
    Orthogonal,
    /// SafeMERGE's selective fusion: the protected input only in the
    /// modules where the others' update is least similar to it.
    Selective,
}

/// Every method, by its PEFT name.
pub const METHODS: [Method; 13] = [
    Method::Cat,
    Method::Linear,
    Method::Svd,
    Method::Ties,
    Method::DareLinear,
    Method::DareTies,
    Method::MagnitudePrune,
    Method::TiesSvd,
    Method::DareLinearSvd,
    Method::DareTiesSvd,
    Method::MagnitudePruneSvd,
    Method::Orthogonal,
    Method::Selective,
];

impl Method {
    pub fn parse(s: &str) -> Option<Self> {
        METHODS.into_iter().find(|m| m.name() == s)
    }

    pub fn name(self) -> &'static str {
        match self {
            Method::Cat => "cat",
            Method::Linear => "linear",
            Method::Svd => "svd",
            Method::Ties => "ties",
            Method::DareLinear => "dare_linear",
            Method::DareTies => "dare_ties",
            Method::MagnitudePrune => "magnitude_prune",
            Method::TiesSvd => "ties_svd",
            Method::DareLinearSvd => "dare_linear_svd",
            Method::DareTiesSvd => "dare_ties_svd",
            Method::MagnitudePruneSvd => "magnitude_prune_svd",
            Method::Orthogonal => "orthogonal",
            Method::Selective => "selective",
        }
    }

    /// Methods that combine A and B separately, like PEFT (equal ranks).
    pub fn per_factor(self) -> bool {
        matches!(
            self,
            Method::Linear
                | Method::Ties
                | Method::DareLinear
                | Method::DareTies
                | Method::MagnitudePrune
        )
    }

    /// The `*_svd` methods: prune each input's dense ΔW, merge, truncate.
    pub fn dense(self) -> bool {
        matches!(
            self,
            Method::TiesSvd
                | Method::DareLinearSvd
                | Method::DareTiesSvd
                | Method::MagnitudePruneSvd
        )
    }

    /// The pruning merge, for the methods that prune.
    pub fn merge(self) -> Option<Merge> {
        Some(match self {
            Method::Ties | Method::TiesSvd => Merge::Ties,
            Method::DareLinear | Method::DareLinearSvd => Merge::DareLinear,
            Method::DareTies | Method::DareTiesSvd => Merge::DareTies,
            Method::MagnitudePrune | Method::MagnitudePruneSvd => Merge::MagnitudePrune,
            Method::Cat | Method::Linear | Method::Svd | Method::Orthogonal | Method::Selective => {
                return None
            }
        })
    }

    /// Methods that prune (need a density).
    pub fn prunes(self) -> bool {
        self.merge().is_some()
    }
}

/// One input adapter and its weights.
#[derive(Debug, Clone)]
pub struct FuseInput {
    pub path: PathBuf,
    /// Per module: one weight everywhere, or by layer and kind ([`super::weights`]).
    pub weights: Weights,
}

impl FuseInput {
    /// An input with one weight everywhere.
    pub fn new(path: impl Into<PathBuf>, weight: f64) -> Self {
        FuseInput {
            path: path.into(),
            weights: Weights::uniform(weight),
        }
    }

    /// Parse `PATH[:WEIGHTS]` (weight 1 when absent; see [`super::weights`] for
    /// `W@A-B` layer ranges and `W%KIND` module kinds).
    pub fn parse(spec: &str) -> Result<Self> {
        if let Some((path, w)) = spec.rsplit_once(':') {
            match Weights::parse(w) {
                Some(Ok(weights)) => {
                    return Ok(FuseInput {
                        path: path.into(),
                        weights,
                    })
                }
                Some(Err(why)) => return Err(Error::Usage(format!("{spec}: {why}"))),
                None => {}
            }
        }
        Ok(FuseInput::new(spec, 1.0))
    }

    /// `PATH:WEIGHTS`, as reports and provenance record it.
    pub fn spec(&self) -> String {
        format!("{}:{}", self.path.display(), self.weights)
    }
}

/// SafeMERGE's default similarity threshold of `selective`.
pub const DEFAULT_THRESHOLD: f64 = 0.35;

/// Options for [`super::fuse`].
#[derive(Debug, Clone)]
pub struct FuseOptions {
    pub method: Method,
    /// `svd` and `*_svd`: the rank kept (default: the largest input rank).
    pub rank: Option<usize>,
    /// ties, dare_*, magnitude_prune: the fraction of entries kept.
    pub density: Option<f64>,
    /// dare_*: the seed of the random masks.
    pub seed: u64,
    /// orthogonal: the input (0-based) whose subspaces the others are
    /// projected away from; the last input when `None`.
    pub protect: Option<usize>,
    /// orthogonal: which of the protected input's subspaces.
    pub side: Side,
    /// selective: which modules get the protected input, by
    /// [`super::selective_similarity`] ([`DEFAULT_THRESHOLD`] by default).
    pub selection: Selection,
    /// For a `.gguf` output: the base model GGUF and the conversion options.
    pub base: Option<PathBuf>,
    pub convert: ConvertOptions,
}

impl FuseOptions {
    /// `method` with every other option at the CLI's default: the largest
    /// rank, no density, seed 0, the last input protected on its column
    /// space, SafeMERGE's threshold, a PEFT output (no base) of type `auto`.
    pub fn new(method: Method) -> FuseOptions {
        FuseOptions {
            method,
            rank: None,
            density: None,
            seed: 0,
            protect: None,
            side: Side::default(),
            selection: Selection::Threshold(DEFAULT_THRESHOLD),
            base: None,
            convert: ConvertOptions::new(OutType::Auto),
        }
    }

    /// The same, writing a GGUF LoRA for `base` with tensors of `outtype`.
    pub fn gguf(self, base: impl Into<PathBuf>, outtype: OutType) -> FuseOptions {
        FuseOptions {
            base: Some(base.into()),
            convert: ConvertOptions::new(outtype),
            ..self
        }
    }
}
