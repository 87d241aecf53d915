//! What a saved network expects of its images and what its outputs mean, so
//! that a run directory alone reproduces `sprout eval` in another framework.
//!
//! [`InputSpec`] holds the dataset's name, its class names, the zero padding
//! applied to the raw images and the per-channel normalisation. Every run's
//! `config.json` holds it under the keys `dataset`, `class_names`, `padding`
//! and `normalization` (with the run's architecture under `architecture`, see
//! [`Described`]), and every network sprout saves holds it in its safetensors
//! metadata under the same keys (strings: the dataset's name as it is, the
//! others as JSON).
//!
//! The recipe for one image of `u8` pixels `x` of shape `padding.source`:
//! pad it with `padding.top` / `bottom` / `left` / `right` rows and columns
//! of zero pixels (before normalising: a padded pixel becomes
//! `-mean[c] / std[c]`), then map every pixel to `(x / 255 - mean[c]) /
//! std[c]`. sprout never resizes. The statistics are those of the padded
//! training images the network was trained on.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};
use sprout_core::data::Normalization;
use sprout_core::Arch;

/// Metadata key holding [`InputSpec::dataset`].
pub const DATASET_KEY: &str = "dataset";
/// Metadata key holding [`InputSpec::class_names`] as JSON.
pub const CLASS_NAMES_KEY: &str = "class_names";
/// Metadata key holding [`InputSpec::padding`] as JSON.
pub const PADDING_KEY: &str = "padding";
/// Metadata key holding [`InputSpec::normalization`] as JSON.
pub const NORMALIZATION_KEY: &str = "normalization";
/// The metadata keys an [`InputSpec`] takes.
pub const KEYS: [&str; 4] = [DATASET_KEY, CLASS_NAMES_KEY, PADDING_KEY, NORMALIZATION_KEY];

/// The zero padding that takes a dataset's images to the network's input.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Padding {
    /// Image shape `[channels, height, width]` in the dataset's files.
    pub source: [usize; 3],
    /// Rows of zero pixels added above the image.
    pub top: usize,
    /// Rows of zero pixels added below it.
    pub bottom: usize,
    /// Columns of zero pixels added on its left.
    pub left: usize,
    /// Columns of zero pixels added on its right.
    pub right: usize,
}

impl Padding {
    /// Images of `source` shape centred in `height x width` (the extra row or
    /// column of an odd difference goes below or right), as
    /// [`Dataset::pad_to`](sprout_core::data::Dataset::pad_to) does; no
    /// padding where the images are already as large.
    pub fn centred(source: [usize; 3], height: usize, width: usize) -> Padding {
        let dh = height.saturating_sub(source[1]);
        let dw = width.saturating_sub(source[2]);
        Padding {
            source,
            top: dh / 2,
            bottom: dh - dh / 2,
            left: dw / 2,
            right: dw - dw / 2,
        }
    }

    /// No padding: the images of `source` shape are taken as they are.
    pub fn none(source: [usize; 3]) -> Padding {
        Padding::centred(source, source[1], source[2])
    }

    /// The shape `[channels, height, width]` of a padded image.
    pub fn padded(&self) -> [usize; 3] {
        [
            self.source[0],
            self.source[1] + self.top + self.bottom,
            self.source[2] + self.left + self.right,
        ]
    }
}

/// How a network's input images are made and what its outputs mean.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct InputSpec {
    /// The dataset the network was trained on, as `--dataset` names it
    /// (`fashion-mnist-embedded` for the subset compiled into sprout).
    pub dataset: String,
    /// The name of every class, by label.
    pub class_names: Vec<String>,
    /// The zero padding applied to the raw images.
    pub padding: Padding,
    /// Per-channel mean and standard deviation of pixels scaled to [0, 1],
    /// applied after padding.
    pub normalization: Normalization,
}

impl InputSpec {
    /// The metadata entries of a saved network.
    pub fn metadata(&self) -> Vec<(&'static str, String)> {
        vec![
            (DATASET_KEY, self.dataset.clone()),
            (CLASS_NAMES_KEY, json(&self.class_names)),
            (PADDING_KEY, json(&self.padding)),
            (NORMALIZATION_KEY, json(&self.normalization)),
        ]
    }

    /// Reads the entries [`InputSpec::metadata`] writes; `Ok(None)` when
    /// the file has none of them (a network saved before sprout recorded
    /// them), an error naming `path` when only some are there or one does
    /// not parse.
    pub fn from_metadata(path: &Path, meta: &HashMap<String, String>) -> Result<Option<InputSpec>> {
        if KEYS.iter().all(|k| !meta.contains_key(*k)) {
            return Ok(None);
        }
        let get = |k: &str| {
            meta.get(k)
                .ok_or_else(|| anyhow!("{}: metadata has no '{k}'", path.display()))
        };
        let parse = |k: &str| -> Result<serde_json::Value> {
            serde_json::from_str(get(k)?)
                .map_err(|e| anyhow!("{}: metadata '{k}' is not JSON: {e}", path.display()))
        };
        let value = serde_json::json!({
            DATASET_KEY: get(DATASET_KEY)?,
            CLASS_NAMES_KEY: parse(CLASS_NAMES_KEY)?,
            PADDING_KEY: parse(PADDING_KEY)?,
            NORMALIZATION_KEY: parse(NORMALIZATION_KEY)?,
        });
        let spec: InputSpec = serde_json::from_value(value)
            .map_err(|e| anyhow!("{}: invalid input description: {e}", path.display()))?;
        spec.validate()
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Ok(Some(spec))
    }

    /// Reads the fields from a run's config.json (`path` names it in
    /// errors); `Ok(None)` when it has no `normalization` (a run written
    /// before sprout recorded it).
    pub fn from_config(path: &Path, config: &serde_json::Value) -> Result<Option<InputSpec>> {
        if config.get(NORMALIZATION_KEY).is_none() {
            return Ok(None);
        }
        let pick: serde_json::Map<String, serde_json::Value> = KEYS
            .iter()
            .filter_map(|k| config.get(*k).map(|v| (k.to_string(), v.clone())))
            .collect();
        let spec: InputSpec = serde_json::from_value(serde_json::Value::Object(pick))
            .map_err(|e| anyhow!("{}: invalid input description: {e}", path.display()))?;
        spec.validate()
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Ok(Some(spec))
    }

    /// Refuses statistics that cannot normalise (lengths that differ from
    /// the channel count, a non-finite mean, a standard deviation that is
    /// not positive) and padding of another channel count.
    pub fn validate(&self) -> Result<()> {
        let n = &self.normalization;
        let c = self.padding.source[0];
        if n.mean.len() != c || n.std.len() != c {
            bail!(
                "normalization has {} means and {} standard deviations for {c}-channel images",
                n.mean.len(),
                n.std.len()
            );
        }
        if n.mean.iter().any(|m| !m.is_finite())
            || n.std.iter().any(|s| !(s.is_finite() && *s > 0.0))
        {
            bail!("normalization needs finite means and positive standard deviations");
        }
        Ok(())
    }

    /// Refuses a description that does not fit `arch`'s input: other
    /// channels, or padding to another image size.
    pub fn check_fits(&self, arch: &Arch) -> Result<()> {
        let [c, h, w] = self.padding.padded();
        if [c, h, w] != arch.input {
            let [ac, ah, aw] = arch.input;
            bail!("the recorded padding makes {c}x{h}x{w} images but the network takes {ac}x{ah}x{aw}");
        }
        Ok(())
    }

    /// `config` (a run's configuration) with this description and, when
    /// given, the architecture of the run's network beside it, to be
    /// written as config.json.
    pub fn describe<'a, T: Serialize>(
        &'a self,
        config: &'a T,
        architecture: Option<&'a Arch>,
    ) -> Described<'a, T> {
        Described {
            config,
            class_names: &self.class_names,
            padding: &self.padding,
            normalization: &self.normalization,
            architecture,
        }
    }
}

/// A run's configuration with the fields of an [`InputSpec`] and the
/// architecture beside its own: what config.json holds. The configuration
/// must hold the dataset's name under `dataset`.
#[derive(Serialize, Debug)]
pub struct Described<'a, T: Serialize> {
    #[serde(flatten)]
    pub config: &'a T,
    pub class_names: &'a [String],
    pub padding: &'a Padding,
    pub normalization: &'a Normalization,
    /// The architecture of the network the run saves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub architecture: Option<&'a Arch>,
}

/// JSON text of a metadata value (plain data: it always serialises).
fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("plain data serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> InputSpec {
        InputSpec {
            dataset: "fashion-mnist".into(),
            class_names: vec!["a".into(), "b".into()],
            padding: Padding::centred([1, 28, 28], 32, 32),
            normalization: Normalization {
                mean: vec![0.25],
                std: vec![0.5],
            },
        }
    }

    #[test]
    fn padding_is_centred_like_pad_to() {
        let p = Padding::centred([1, 27, 28], 32, 32);
        assert_eq!((p.top, p.bottom, p.left, p.right), (2, 3, 2, 2));
        assert_eq!(p.padded(), [1, 32, 32]);
        let q = Padding::centred([3, 32, 32], 32, 32);
        assert_eq!((q.top, q.bottom, q.left, q.right), (0, 0, 0, 0));
        // Where pad_to puts the first source pixel.
        let ds = sprout_core::data::Dataset::new(vec![7; 27 * 28], vec![0], 1, 27, 28, 2).unwrap();
        let padded = ds.pad_to(32, 32).unwrap();
        assert_eq!(padded.images[p.top * 32 + p.left], 7);
        assert_eq!(padded.images[(p.top - 1) * 32 + p.left], 0);
        assert_eq!(padded.images[(31 - p.bottom) * 32 + 31 - p.right], 7);
    }

    #[test]
    fn metadata_and_config_round_trip() {
        let s = spec();
        let meta: HashMap<String, String> = s
            .metadata()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let p = Path::new("m.safetensors");
        assert_eq!(InputSpec::from_metadata(p, &meta).unwrap(), Some(s.clone()));
        assert_eq!(InputSpec::from_metadata(p, &HashMap::new()).unwrap(), None);
        let mut partial = meta.clone();
        partial.remove(PADDING_KEY);
        let m = InputSpec::from_metadata(p, &partial)
            .unwrap_err()
            .to_string();
        assert!(
            m.starts_with("m.safetensors: metadata has no 'padding'"),
            "{m}"
        );

        let config = serde_json::json!({"command": "train", "dataset": "fashion-mnist", "seed": 3});
        let arch = Arch::vgg19(4, [1, 32, 32], 2).unwrap();
        let v = serde_json::to_value(s.describe(&config, Some(&arch))).unwrap();
        assert_eq!(v["seed"], 3);
        assert_eq!(v["padding"]["top"], 2);
        assert_eq!(v["class_names"][1], "b");
        let back: Arch = serde_json::from_value(v["architecture"].clone()).unwrap();
        assert_eq!(back, arch);
        let c = Path::new("config.json");
        assert_eq!(InputSpec::from_config(c, &v).unwrap(), Some(s.clone()));
        assert_eq!(InputSpec::from_config(c, &config).unwrap(), None);
        s.check_fits(&arch).unwrap();
        let m = s
            .check_fits(&Arch::vgg19(4, [3, 32, 32], 2).unwrap())
            .unwrap_err()
            .to_string();
        assert!(m.contains("1x32x32") && m.contains("3x32x32"), "{m}");

        let mut bad = s;
        bad.normalization.std[0] = 0.0;
        assert!(bad.validate().is_err());
        bad.normalization = Normalization::identity(3);
        assert!(bad.validate().is_err());
    }
}
