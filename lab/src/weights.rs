//! Weights on disk: networks and named tensor sets as safetensors files, and
//! atomic file replacement.
//!
//! A network file holds one F32 tensor per [`ParamSpec`](sprout_core::arch::ParamSpec),
//! named like `layers.3.conv.weight` or `head.weight`, with the metadata keys
//! `format` = `sprout` and `arch` = the architecture as JSON, and those of an
//! [`InputSpec`] (`dataset`, `class_names`, `padding`, `normalization`), so
//! that the file alone rebuilds the network, prepares its images and names
//! its outputs, and other frameworks can read the tensors.
//!
//! Every error is one line naming the file and what is wrong with it.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors, View};
use sprout_core::arch::{BnPart, Role};
use sprout_core::{Arch, Network};

use crate::input::InputSpec;

/// Value of the `format` metadata key in files written by sprout.
pub const FORMAT: &str = "sprout";
/// Metadata key holding the architecture JSON.
pub const ARCH_KEY: &str = "arch";
/// Metadata key holding [`FORMAT`].
pub const FORMAT_KEY: &str = "format";

/// Writes `bytes` to `path` so that readers see either the old file or the
/// whole new one: write a sibling temporary file, fsync it, rename it over
/// `path`, then fsync the directory (where the platform allows).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_sibling(path)?;
    let written = (|| -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        bail!("{}: cannot write: {e}", path.display());
    }
    sync_parent(path);
    Ok(())
}

/// `dir/name.tmp` beside `dir/name`.
fn temp_sibling(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{}: not a file path", path.display()))?;
    let mut tmp = name.to_os_string();
    tmp.push(".tmp");
    Ok(path.with_file_name(tmp))
}

/// Flushes the directory entry of a rename to disk; best effort (not every
/// platform can open a directory for syncing).
fn sync_parent(path: &Path) {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(dir) = fs::File::open(parent) {
        let _ = dir.sync_all();
    }
}

/// A borrowed f32 tensor as a safetensors view (little-endian bytes).
struct F32View<'a> {
    shape: &'a [usize],
    data: &'a [f32],
}

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.data.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
    fn data_len(&self) -> usize {
        self.data.len() * 4
    }
}

/// Writes named F32 tensors `(name, shape, values)` and string metadata to
/// `path` as safetensors, atomically. Errors if a name repeats or a shape
/// does not match its number of values.
pub fn save_tensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, &[f32])],
    metadata: &[(&str, String)],
) -> Result<()> {
    let mut seen = HashSet::new();
    for (name, shape, data) in tensors {
        if !seen.insert(name.as_str()) {
            bail!("{}: tensor {name} given twice", path.display());
        }
        let n: usize = shape.iter().product();
        if n != data.len() {
            bail!(
                "{}: tensor {name} has shape {shape:?} ({n} values) but {} values were given",
                path.display(),
                data.len()
            );
        }
    }
    let views = tensors.iter().map(|(name, shape, data)| {
        (
            name.as_str(),
            F32View {
                shape: shape.as_slice(),
                data,
            },
        )
    });
    let meta: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| ((*k).to_string(), v.clone()))
        .collect();
    let bytes = safetensors::serialize(views, Some(meta))
        .map_err(|e| anyhow!("{}: cannot encode safetensors: {e}", path.display()))?;
    write_atomic(path, &sorted_header(bytes))
}

/// The safetensors encoder writes its JSON header from hash maps, so the key
/// order (and with it the file's bytes) changes from run to run. Rewrites the
/// header with its keys sorted: the same JSON, so the same length and offsets,
/// and equal tensors and metadata give byte-identical files.
fn sorted_header(mut bytes: Vec<u8>) -> Vec<u8> {
    let Some(len) = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    else {
        return bytes;
    };
    let Some(header) = bytes.get(8..8 + len as usize) else {
        return bytes;
    };
    let text = match std::str::from_utf8(header) {
        Ok(t) => t.trim_end_matches(' '),
        Err(_) => return bytes,
    };
    // serde_json's maps are ordered by key.
    let sorted = serde_json::from_str::<serde_json::Value>(text)
        .and_then(|v| serde_json::to_vec(&v))
        .ok();
    if let Some(sorted) = sorted.filter(|s| s.len() == text.len()) {
        bytes[8..8 + sorted.len()].copy_from_slice(&sorted);
    }
    bytes
}

/// Reads the whole file, which must be a regular file (a device or a FIFO
/// would never end); the error names it.
fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    let meta = fs::metadata(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        bail!("{}: not a regular file", path.display());
    }
    fs::read(path).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// Parses safetensors bytes read from `path`.
fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<SafeTensors<'a>> {
    SafeTensors::deserialize(bytes)
        .map_err(|e| anyhow!("{}: not a safetensors file ({e})", path.display()))
}

/// The file's metadata (empty when it has none).
fn metadata_of(path: &Path, bytes: &[u8]) -> Result<HashMap<String, String>> {
    let (_, meta) = SafeTensors::read_metadata(bytes)
        .map_err(|e| anyhow!("{}: not a safetensors file ({e})", path.display()))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

/// Decodes an F32 tensor; the data may sit at any byte alignment.
fn decode_f32(path: &Path, name: &str, view: &TensorView<'_>) -> Result<Vec<f32>> {
    if view.dtype() != Dtype::F32 {
        bail!(
            "{}: tensor {name} has dtype {}, expected F32",
            path.display(),
            view.dtype()
        );
    }
    Ok(view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// Reads every tensor of a safetensors file (all must be F32), sorted by
/// name, with the file's metadata.
#[allow(clippy::type_complexity)]
pub fn load_tensors(
    path: &Path,
) -> Result<(Vec<(String, Vec<usize>, Vec<f32>)>, HashMap<String, String>)> {
    let bytes = read_bytes(path)?;
    let st = parse(path, &bytes)?;
    let meta = metadata_of(path, &bytes)?;
    let mut out = Vec::with_capacity(st.len());
    for (name, view) in st.iter() {
        let values = decode_f32(path, name, &view)?;
        out.push((name.to_string(), view.shape().to_vec(), values));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((out, meta))
}

/// Saves `net` to `path` (atomically): its tensors under their
/// [`ParamSpec`](sprout_core::arch::ParamSpec) names, the metadata `format` =
/// `sprout` and `arch` = the architecture JSON, the entries of `input` (how
/// the network takes its images; every command passes it, it must fit the
/// architecture) and `extra_metadata`.
pub fn save_network(
    path: &Path,
    net: &Network,
    input: Option<&InputSpec>,
    extra_metadata: &[(&str, String)],
) -> Result<()> {
    let specs = net.arch.param_specs();
    if specs.len() != net.tensors.len() {
        bail!(
            "{}: the network has {} tensors but its architecture needs {}",
            path.display(),
            net.tensors.len(),
            specs.len()
        );
    }
    let arch_json = serde_json::to_string(&net.arch)
        .map_err(|e| anyhow!("{}: cannot encode the architecture: {e}", path.display()))?;
    let mut metadata: Vec<(&str, String)> =
        vec![(FORMAT_KEY, FORMAT.into()), (ARCH_KEY, arch_json)];
    if let Some(input) = input {
        input
            .check_fits(&net.arch)
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        metadata.extend(input.metadata());
    }
    for (k, v) in extra_metadata {
        if *k == FORMAT_KEY || *k == ARCH_KEY || crate::input::KEYS.contains(k) {
            bail!("{}: metadata key '{k}' is reserved", path.display());
        }
        metadata.push((k, v.clone()));
    }
    let tensors: Vec<(String, Vec<usize>, &[f32])> = specs
        .into_iter()
        .zip(&net.tensors)
        .map(|(s, t)| (s.name, s.shape, t.as_slice()))
        .collect();
    save_tensors(path, &tensors, &metadata)
}

/// The [`InputSpec`] in the metadata of the network file `path`; `Ok(None)`
/// for a file saved before sprout recorded it.
pub fn load_input_spec(path: &Path) -> Result<Option<InputSpec>> {
    let bytes = read_bytes(path)?;
    let meta = metadata_of(path, &bytes)?;
    InputSpec::from_metadata(path, &meta)
}

/// Loads a network saved by [`save_network`]: the architecture from the
/// `arch` metadata (validated), then every tensor it needs by name, checked
/// for dtype, shape and finite values. Tensors the architecture does not name
/// are ignored.
pub fn load_network(path: &Path) -> Result<Network> {
    let bytes = read_bytes(path)?;
    network_from_bytes(path, &bytes)
}

/// [`load_network`] on the bytes of a file; `path` names it in errors.
pub fn network_from_bytes(path: &Path, bytes: &[u8]) -> Result<Network> {
    let st = parse(path, bytes)?;
    let meta = metadata_of(path, bytes)?;
    let arch_json = meta.get(ARCH_KEY).ok_or_else(|| {
        anyhow!(
            "{}: missing '{ARCH_KEY}' metadata (not a network saved by sprout)",
            path.display()
        )
    })?;
    let arch: Arch = serde_json::from_str(arch_json).map_err(|e| {
        anyhow!(
            "{}: invalid architecture JSON in metadata: {e}",
            path.display()
        )
    })?;
    arch.validate()
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let specs = arch.param_specs();
    let mut tensors = Vec::with_capacity(specs.len());
    for s in &specs {
        let view = st
            .tensor(&s.name)
            .map_err(|_| anyhow!("{}: missing tensor {}", path.display(), s.name))?;
        if view.shape() != s.shape.as_slice() {
            bail!(
                "{}: tensor {} has shape {:?} but the architecture needs {:?}",
                path.display(),
                s.name,
                view.shape(),
                s.shape
            );
        }
        let values = decode_f32(path, &s.name, &view)?;
        check_values(path, &s.name, s.role, &values)?;
        tensors.push(values);
    }
    Network::from_tensors(arch, tensors).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// Refuses NaN or infinite values anywhere, and a negative BN running
/// variance (the square root of a negative variance is NaN in every forward
/// pass); the error names the file and the tensor.
fn check_values(path: &Path, name: &str, role: Role, values: &[f32]) -> Result<()> {
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        bail!(
            "{}: tensor {name} holds NaN or infinite values (first at index {i})",
            path.display()
        );
    }
    let is_var = matches!(
        role,
        Role::BatchNorm {
            part: BnPart::RunningVar,
            ..
        }
    );
    if is_var {
        if let Some(i) = values.iter().position(|&v| v < 0.0) {
            bail!(
                "{}: tensor {name} holds the negative variance {} at index {i}",
                path.display(),
                values[i]
            );
        }
    }
    Ok(())
}

/// Reads an architecture from a JSON file (as written by serde for
/// [`Arch`]) and validates it.
pub fn load_arch_json(path: &Path) -> Result<Arch> {
    let bytes = read_bytes(path)?;
    arch_from_json(path, &bytes)
}

/// [`load_arch_json`] on the bytes of a file; `path` names it in errors.
pub fn arch_from_json(path: &Path, bytes: &[u8]) -> Result<Arch> {
    let text =
        std::str::from_utf8(bytes).map_err(|e| anyhow!("{}: not UTF-8: {e}", path.display()))?;
    let arch: Arch = serde_json::from_str(text)
        .map_err(|e| anyhow!("{}: invalid architecture JSON: {e}", path.display()))?;
    arch.validate()
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(arch)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sprout_core::rng::Rng;
    use sprout_core::Family;

    pub(crate) use crate::scratch::TempDir;

    fn random_widths(family: Family, rng: &mut Rng) -> Vec<usize> {
        (0..family.layers()).map(|_| 1 + rng.below(24)).collect()
    }

    fn assert_round_trip(net: &Network, dir: &Path, name: &str) {
        let path = dir.join(name);
        save_network(&path, net, None, &[("phase", "3".into())]).unwrap();
        let back = load_network(&path).unwrap();
        assert_eq!(&back, net);
        // Bit-exact, not just equal as floats.
        for (a, b) in back.tensors.iter().zip(&net.tensors) {
            assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()));
        }
        let (tensors, meta) = load_tensors(&path).unwrap();
        assert_eq!(meta.get("format").map(String::as_str), Some("sprout"));
        assert_eq!(meta.get("phase").map(String::as_str), Some("3"));
        let arch: Arch = serde_json::from_str(&meta["arch"]).unwrap();
        assert_eq!(arch, net.arch);
        assert_eq!(tensors.len(), net.tensors.len());
        let specs = net.arch.param_specs();
        for (s, t) in specs.iter().zip(&net.tensors) {
            let (_, shape, values) = tensors.iter().find(|(n, _, _)| n == &s.name).unwrap();
            assert_eq!(shape, &s.shape);
            assert_eq!(values, t);
        }
        assert!(!path.with_file_name(format!("{name}.tmp")).exists());
    }

    #[test]
    fn presets_round_trip() {
        let dir = TempDir::new("weights");
        let vgg = Network::init(&Arch::vgg19(16, [1, 32, 32], 10).unwrap(), 1);
        assert_round_trip(&vgg, &dir.0, "vgg.safetensors");
        let mob = Network::init(&Arch::mobilenet_v1(32, [3, 32, 32], 10).unwrap(), 2);
        assert_round_trip(&mob, &dir.0, "mobilenet.safetensors");
        // Overwriting an existing file replaces it.
        let vgg2 = Network::init(&Arch::vgg19(8, [1, 32, 32], 10).unwrap(), 3);
        assert_round_trip(&vgg2, &dir.0, "vgg.safetensors");
    }

    #[test]
    fn networks_carry_their_input_description() {
        let dir = TempDir::new("weights");
        let path = dir.0.join("m.safetensors");
        let splits = crate::data::embedded().unwrap();
        let input = splits.input_spec(sprout_core::data::Normalization::of(&splits.train));
        let net = Network::init(&Arch::vgg19(4, [1, 32, 32], 10).unwrap(), 0);
        save_network(&path, &net, Some(&input), &[]).unwrap();
        assert_eq!(load_input_spec(&path).unwrap(), Some(input.clone()));
        assert_eq!(load_network(&path).unwrap(), net);
        let (_, meta) = load_tensors(&path).unwrap();
        assert_eq!(meta["dataset"], "fashion-mnist-embedded");
        let names: Vec<String> = serde_json::from_str(&meta["class_names"]).unwrap();
        assert_eq!(names[0], "T-shirt/top");
        // Without one, the file has none.
        save_network(&path, &net, None, &[]).unwrap();
        assert_eq!(load_input_spec(&path).unwrap(), None);
        // Its keys are reserved, and it must fit the architecture.
        let m = save_network(&path, &net, None, &[("padding", "{}".into())])
            .unwrap_err()
            .to_string();
        assert!(m.contains("'padding' is reserved"), "{m}");
        let rgb = Network::init(&Arch::vgg19(4, [3, 32, 32], 10).unwrap(), 0);
        let m = save_network(&path, &rgb, Some(&input), &[])
            .unwrap_err()
            .to_string();
        assert!(m.contains("1x32x32") && m.contains("3x32x32"), "{m}");
    }

    #[test]
    fn random_widths_round_trip() {
        let dir = TempDir::new("weights");
        let mut rng = Rng::new(7);
        for (i, family) in [
            Family::Vgg19,
            Family::MobilenetV1,
            Family::Vgg19,
            Family::MobilenetV1,
        ]
        .into_iter()
        .enumerate()
        {
            let widths = random_widths(family, &mut rng);
            let classes = 2 + rng.below(20);
            let arch = Arch::new(family, [1 + rng.below(3), 32, 32], classes, widths).unwrap();
            let net = Network::init(&arch, i as u64);
            assert_round_trip(&net, &dir.0, &format!("net{i}.safetensors"));
        }
    }

    #[test]
    fn layer_names_are_the_spec_names() {
        let dir = TempDir::new("weights");
        let path = dir.0.join("m.safetensors");
        let net = Network::init(&Arch::vgg19(4, [1, 32, 32], 10).unwrap(), 0);
        save_network(&path, &net, None, &[]).unwrap();
        let (tensors, _) = load_tensors(&path).unwrap();
        let find = |n: &str| tensors.iter().find(|t| t.0 == n).map(|t| t.1.clone());
        assert_eq!(find("layers.3.conv.weight"), Some(vec![4, 4, 3, 3]));
        assert_eq!(find("layers.0.conv.weight"), Some(vec![4, 1, 3, 3]));
        assert_eq!(find("head.weight"), Some(vec![10, 4]));
        assert_eq!(find("head.bias"), Some(vec![10]));
        assert_eq!(find("layers.15.bn.running_var"), Some(vec![4]));
    }

    #[test]
    fn generic_tensors_round_trip() {
        let dir = TempDir::new("weights");
        let path = dir.0.join("state.safetensors");
        let a = [1.5f32, -2.0, 3.25, 0.0, f32::MIN_POSITIVE, 7.0];
        let b = [42.0f32];
        save_tensors(
            &path,
            &[("b".into(), vec![1], &b), ("a".into(), vec![2, 3], &a)],
            &[("step", "12".into())],
        )
        .unwrap();
        let (t, meta) = load_tensors(&path).unwrap();
        assert_eq!(
            t,
            vec![
                ("a".to_string(), vec![2, 3], a.to_vec()),
                ("b".to_string(), vec![1], b.to_vec())
            ]
        );
        assert_eq!(meta["step"], "12");
        // Inconsistent input is refused before anything is written.
        let bad = dir.0.join("bad.safetensors");
        assert!(save_tensors(&bad, &[("a".into(), vec![4], &a)], &[]).is_err());
        assert!(save_tensors(
            &bad,
            &[("a".into(), vec![1], &b), ("a".into(), vec![1], &b)],
            &[]
        )
        .is_err());
        assert!(!bad.exists());
    }

    #[test]
    fn garbage_and_truncated_files_name_the_path() {
        let dir = TempDir::new("weights");
        let path = dir.0.join("m.safetensors");
        let p = path.display().to_string();
        let net = Network::init(&Arch::vgg19(4, [1, 32, 32], 10).unwrap(), 0);
        save_network(&path, &net, None, &[]).unwrap();
        let bytes = fs::read(&path).unwrap();

        for broken in [
            bytes[..bytes.len() - 10].to_vec(),
            bytes[..5].to_vec(),
            b"hello, this is not a tensor file at all".to_vec(),
            Vec::new(),
        ] {
            fs::write(&path, &broken).unwrap();
            let m = load_network(&path).unwrap_err().to_string();
            assert!(m.starts_with(&p), "{m}");
            assert!(m.contains("not a safetensors file"), "{m}");
            assert!(!m.contains('\n'), "{m}");
            let m = load_tensors(&path).unwrap_err().to_string();
            assert!(m.starts_with(&p), "{m}");
        }
        let missing = dir.0.join("absent.safetensors");
        let m = load_network(&missing).unwrap_err().to_string();
        assert!(m.starts_with(&missing.display().to_string()), "{m}");
    }

    /// Writes `net`'s tensors with `arch` as the architecture metadata.
    fn save_with_arch(path: &Path, net: &Network, arch_json: Option<&str>, skip: Option<&str>) {
        let tensors: Vec<(String, Vec<usize>, &[f32])> = net
            .arch
            .param_specs()
            .into_iter()
            .zip(&net.tensors)
            .filter(|(s, _)| Some(s.name.as_str()) != skip)
            .map(|(s, t)| (s.name, s.shape, t.as_slice()))
            .collect();
        let meta: Vec<(&str, String)> = arch_json
            .map(|a| ("arch", a.to_string()))
            .into_iter()
            .collect();
        save_tensors(path, &tensors, &meta).unwrap();
    }

    #[test]
    fn wrong_shape_missing_tensor_and_bad_metadata_are_reported() {
        let dir = TempDir::new("weights");
        let path = dir.0.join("m.safetensors");
        let p = path.display().to_string();
        let net = Network::init(&Arch::vgg19(4, [1, 32, 32], 10).unwrap(), 0);

        // The metadata claims width 5 in layer 3.
        let mut widths = vec![4; 16];
        widths[3] = 5;
        let other = Arch::new(Family::Vgg19, [1, 32, 32], 10, widths).unwrap();
        let json = serde_json::to_string(&other).unwrap();
        save_with_arch(&path, &net, Some(&json), None);
        let m = load_network(&path).unwrap_err().to_string();
        assert!(m.starts_with(&p), "{m}");
        assert!(
            m.contains("tensor layers.3.conv.weight has shape [4, 4, 3, 3] but the architecture needs [5, 4, 3, 3]"),
            "{m}"
        );

        let json = serde_json::to_string(&net.arch).unwrap();
        save_with_arch(&path, &net, Some(&json), Some("head.bias"));
        let m = load_network(&path).unwrap_err().to_string();
        assert!(
            m.starts_with(&p) && m.contains("missing tensor head.bias"),
            "{m}"
        );

        save_with_arch(&path, &net, None, None);
        let m = load_network(&path).unwrap_err().to_string();
        assert!(
            m.starts_with(&p) && m.contains("missing 'arch' metadata"),
            "{m}"
        );

        save_with_arch(&path, &net, Some("{\"family\": \"resnet\"}"), None);
        let m = load_network(&path).unwrap_err().to_string();
        assert!(
            m.starts_with(&p) && m.contains("invalid architecture JSON"),
            "{m}"
        );

        // Valid JSON, impossible architecture.
        let bad = json.replace("\"classes\":10", "\"classes\":1");
        assert_ne!(bad, json);
        save_with_arch(&path, &net, Some(&bad), None);
        let m = load_network(&path).unwrap_err().to_string();
        assert!(m.starts_with(&p) && m.contains("classes"), "{m}");

        // Non-finite values.
        let mut nan = net.clone();
        nan.tensors[0][0] = f32::NAN;
        save_with_arch(&path, &nan, Some(&json), None);
        let m = load_network(&path).unwrap_err().to_string();
        assert!(m.starts_with(&p) && m.contains("NaN"), "{m}");
    }

    #[test]
    fn wrong_dtype_is_reported() {
        let dir = TempDir::new("weights");
        let path = dir.0.join("m.safetensors");
        let net = Network::init(&Arch::vgg19(4, [1, 32, 32], 10).unwrap(), 0);
        let json = serde_json::to_string(&net.arch).unwrap();
        let specs = net.arch.param_specs();
        let bytes: Vec<Vec<u8>> = specs
            .iter()
            .zip(&net.tensors)
            .map(|(s, t)| {
                if s.name == "head.bias" {
                    t.iter().flat_map(|v| f64::from(*v).to_le_bytes()).collect()
                } else {
                    t.iter().flat_map(|v| v.to_le_bytes()).collect()
                }
            })
            .collect();
        let views: Vec<(String, TensorView<'_>)> = specs
            .iter()
            .zip(&bytes)
            .map(|(s, b)| {
                let dtype = if s.name == "head.bias" {
                    Dtype::F64
                } else {
                    Dtype::F32
                };
                (
                    s.name.clone(),
                    TensorView::new(dtype, s.shape.clone(), b).unwrap(),
                )
            })
            .collect();
        let meta = HashMap::from([("arch".to_string(), json)]);
        fs::write(&path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
        let m = load_network(&path).unwrap_err().to_string();
        assert!(m.starts_with(&path.display().to_string()), "{m}");
        assert!(
            m.contains("tensor head.bias has dtype F64, expected F32"),
            "{m}"
        );
    }

    #[test]
    fn arch_json_files() {
        let dir = TempDir::new("weights");
        let path = dir.0.join("arch.json");
        let p = path.display().to_string();
        let arch = Arch::mobilenet_v1(8, [3, 32, 32], 100).unwrap();
        write_atomic(
            &path,
            serde_json::to_string_pretty(&arch).unwrap().as_bytes(),
        )
        .unwrap();
        assert_eq!(load_arch_json(&path).unwrap(), arch);

        write_atomic(&path, b"{ not json").unwrap();
        let m = load_arch_json(&path).unwrap_err().to_string();
        assert!(
            m.starts_with(&p) && m.contains("invalid architecture JSON"),
            "{m}"
        );

        let mut short = serde_json::to_value(&arch).unwrap();
        short["widths"] = serde_json::json!([8, 8, 8]);
        write_atomic(&path, short.to_string().as_bytes()).unwrap();
        let m = load_arch_json(&path).unwrap_err().to_string();
        assert!(m.starts_with(&p) && m.contains("14 growable layers"), "{m}");

        let m = load_arch_json(&dir.0.join("none.json"))
            .unwrap_err()
            .to_string();
        assert!(m.contains("none.json"), "{m}");
    }

    #[test]
    fn equal_contents_give_identical_files() {
        let dir = TempDir::new("weights-reproducible");
        let data = [1.0f32, 2.0, 3.0];
        let tensors = vec![
            ("b".to_string(), vec![3], &data[..]),
            ("a".to_string(), vec![1, 3], &data[..]),
        ];
        let keys = ["k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7"];
        let meta: Vec<(&str, String)> = keys.iter().map(|k| (*k, format!("v{k}"))).collect();
        let (p1, p2) = (dir.0.join("1.safetensors"), dir.0.join("2.safetensors"));
        save_tensors(&p1, &tensors, &meta).unwrap();
        save_tensors(&p2, &tensors, &meta).unwrap();
        let (b1, b2) = (fs::read(&p1).unwrap(), fs::read(&p2).unwrap());
        assert_eq!(b1, b2);
        let (back, m) = load_tensors(&p1).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(m["k3"], "vk3");
    }

    #[test]
    fn write_atomic_replaces_and_reports_bad_paths() {
        let dir = TempDir::new("weights");
        let path = dir.0.join("x.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert!(!dir.0.join("x.json.tmp").exists());
        let nowhere = dir.0.join("no/such/dir/x.json");
        let m = write_atomic(&nowhere, b"x").unwrap_err().to_string();
        assert!(m.starts_with(&nowhere.display().to_string()), "{m}");
    }

    #[test]
    fn negative_running_variance_is_refused() {
        let dir = TempDir::new("weights");
        let path = dir.0.join("m.safetensors");
        let mut net = Network::init(&Arch::vgg19(2, [1, 32, 32], 10).unwrap(), 0);
        let i = net
            .specs()
            .iter()
            .position(|s| s.name == "layers.0.bn.running_var")
            .unwrap();
        net.tensors[i][0] = -1.0;
        save_network(&path, &net, None, &[]).unwrap();
        let m = load_network(&path).unwrap_err().to_string();
        assert_eq!(
            m,
            format!(
                "{}: tensor layers.0.bn.running_var holds the negative variance -1 at index 0",
                path.display()
            )
        );
        net.tensors[i][0] = f32::INFINITY;
        save_network(&path, &net, None, &[]).unwrap();
        let m = load_network(&path).unwrap_err().to_string();
        assert!(
            m.contains("layers.0.bn.running_var holds NaN or infinite"),
            "{m}"
        );
    }

    /// Cases of the safetensors fuzz tests below.
    const SAFETENSORS_FUZZ_CASES: u32 = 256;
    /// Cases of the architecture JSON fuzz tests below.
    const ARCH_JSON_FUZZ_CASES: u32 = 256;

    /// A small saved network's file bytes.
    fn network_bytes() -> Vec<u8> {
        use std::sync::OnceLock;
        static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
        BYTES
            .get_or_init(|| {
                let dir = TempDir::new("weights-fuzz");
                let path = dir.0.join("m.safetensors");
                let net = Network::init(&Arch::vgg19(1, [1, 32, 32], 2).unwrap(), 0);
                save_network(&path, &net, None, &[]).unwrap();
                fs::read(&path).unwrap()
            })
            .clone()
    }

    fn arch_text() -> String {
        serde_json::to_string(&Arch::mobilenet_v1(2, [3, 32, 32], 10).unwrap()).unwrap()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: SAFETENSORS_FUZZ_CASES, ..Default::default() })]

        #[test]
        fn fuzz_safetensors_arbitrary_bytes(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            len in proptest::prelude::any::<u16>(),
        ) {
            let mut bytes = bytes;
            // Often a plausible header length, to get past the first check.
            if bytes.len() >= 8 && len % 2 == 0 {
                let n = (u64::from(len) % (bytes.len() as u64 - 7)).to_le_bytes();
                bytes[..8].copy_from_slice(&n);
            }
            let p = Path::new("fuzz.safetensors");
            if let Ok(net) = network_from_bytes(p, &bytes) {
                proptest::prop_assert!(net.tensors.iter().flatten().all(|v| v.is_finite()));
            }
        }

        #[test]
        fn fuzz_safetensors_mutated_valid_file(
            edits in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 1..4),
            header_only in proptest::prelude::any::<bool>(),
        ) {
            let mut bytes = network_bytes();
            let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            for &(pos, b) in &edits {
                let at = if header_only { pos % header } else { pos % bytes.len() };
                bytes[at] = b;
            }
            let p = Path::new("fuzz.safetensors");
            match network_from_bytes(p, &bytes) {
                Ok(net) => {
                    proptest::prop_assert!(net.tensors.iter().flatten().all(|v| v.is_finite()));
                    proptest::prop_assert_eq!(net.tensors.len(), net.arch.param_specs().len());
                }
                Err(e) => proptest::prop_assert!(e.to_string().starts_with("fuzz.safetensors")),
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: ARCH_JSON_FUZZ_CASES, ..Default::default() })]

        #[test]
        fn fuzz_arch_json_arbitrary_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            if let Ok(a) = arch_from_json(Path::new("fuzz.json"), &bytes) {
                proptest::prop_assert!(a.validate().is_ok());
            }
        }

        #[test]
        fn fuzz_arch_json_mutated_valid_file(
            edits in proptest::collection::vec((proptest::prelude::any::<usize>(), 0x20u8..0x7f), 1..4),
        ) {
            let mut bytes = arch_text().into_bytes();
            for &(pos, b) in &edits {
                let at = pos % bytes.len();
                bytes[at] = b;
            }
            match arch_from_json(Path::new("fuzz.json"), &bytes) {
                Ok(a) => proptest::prop_assert!(a.validate().is_ok()),
                Err(e) => proptest::prop_assert!(e.to_string().starts_with("fuzz.json")),
            }
        }
    }
}
