//! `sprout info`: parameters, MACs and per-layer shapes of an architecture,
//! and the architecture flags shared by every command that builds one.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use serde_json::json;
use sprout_core::arch::{Post, Role};
use sprout_core::{Arch, Family};

use crate::weights::load_arch_json;

/// Flags of `sprout info`.
#[derive(Clone, Debug, clap::Args)]
pub struct InfoArgs {
    /// Architecture family: vgg19 or mobilenet-v1.
    #[arg(long, default_value = "vgg19")]
    pub arch: String,
    /// Width of every growable layer [default: 16 for vgg19, 32 for mobilenet-v1].
    #[arg(long, conflicts_with = "widths")]
    pub width: Option<usize>,
    /// One width per growable layer, comma-separated (16 for vgg19, 14 for mobilenet-v1).
    #[arg(long, value_name = "W1,W2,...")]
    pub widths: Option<String>,
    /// Input shape as CxHxW.
    #[arg(long, default_value = "1x32x32", value_name = "CxHxW")]
    pub input: String,
    /// Number of classes.
    #[arg(long, default_value_t = 10)]
    pub classes: usize,
    /// Architecture JSON file (as written in run directories); overrides the other architecture flags.
    #[arg(long, value_name = "FILE")]
    pub arch_file: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Default seed width of a family (docs/conventions.md).
pub fn default_width(family: Family) -> usize {
    match family {
        Family::Vgg19 => 16,
        Family::MobilenetV1 => 32,
    }
}

/// Parses `CxHxW`, e.g. `1x32x32`.
pub fn parse_input(s: &str) -> Result<[usize; 3]> {
    let parts: Vec<&str> = s.trim().split(['x', 'X']).collect();
    let dims: Option<Vec<usize>> = parts.iter().map(|p| p.trim().parse().ok()).collect();
    match dims.as_deref() {
        Some(&[c, h, w]) if c > 0 && h > 0 && w > 0 => Ok([c, h, w]),
        _ => bail!("--input: expected CxHxW, e.g. 1x32x32, got '{s}'"),
    }
}

/// Parses a comma-separated width list for `family`.
pub fn parse_widths(s: &str, family: Family) -> Result<Vec<usize>> {
    let widths = s
        .split(',')
        .map(|t| {
            let t = t.trim();
            t.parse::<usize>().ok().filter(|&w| w > 0).ok_or_else(|| {
                anyhow!("--widths: '{t}' is not a width (expected a positive integer)")
            })
        })
        .collect::<Result<Vec<usize>>>()?;
    let n = family.layers();
    if widths.len() != n {
        bail!(
            "--widths: expected {n} comma-separated widths for {}, got {}",
            family.name(),
            widths.len()
        );
    }
    Ok(widths)
}

/// Builds the architecture the flags describe: `arch_file` when given
/// (the other flags are then ignored), otherwise the `arch` family with
/// `widths`, or `width` everywhere (default: the family's seed width), on
/// `input` (CxHxW) images and `classes` classes.
pub fn arch_from_flags(
    arch: &str,
    width: Option<usize>,
    widths: Option<&str>,
    input: &str,
    classes: usize,
    arch_file: Option<&Path>,
) -> Result<Arch> {
    if let Some(path) = arch_file {
        return load_arch_json(path);
    }
    let family = Family::parse(arch.trim()).map_err(|_| {
        anyhow!("--arch: unknown architecture '{arch}' (expected vgg19 or mobilenet-v1)")
    })?;
    let input = parse_input(input)?;
    let widths = match (widths, width) {
        (Some(_), Some(_)) => bail!("--width and --widths cannot be used together"),
        (Some(list), None) => parse_widths(list, family)?,
        (None, Some(0)) => bail!("--width: must be at least 1"),
        (None, w) => vec![w.unwrap_or_else(|| default_width(family)); family.layers()],
    };
    Ok(Arch::new(family, input, classes, widths)?)
}

/// One row of the per-layer table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerRow {
    /// Layer index, or `head`.
    pub name: String,
    /// What the layer computes, e.g. `conv3x3 + maxpool`.
    pub kind: String,
    pub cin: usize,
    pub cout: usize,
    /// Input and output spatial size.
    pub in_hw: (usize, usize),
    pub out_hw: (usize, usize),
    /// Learnable parameters of the layer (BN running statistics not counted).
    pub params: u64,
}

/// The per-layer rows of `arch`: one per growable layer, then the head.
pub fn layer_rows(arch: &Arch) -> Vec<LayerRow> {
    let units = arch.units();
    let mut params = vec![0u64; units.len()];
    let mut head_params = 0u64;
    for s in arch.param_specs().iter().filter(|s| s.learnable) {
        let n = s.len() as u64;
        match s.role {
            Role::ConvWeight { layer }
            | Role::BatchNorm { layer, .. }
            | Role::DepthwiseWeight { layer } => params[layer] += n,
            Role::HeadWeight | Role::HeadBias => head_params += n,
        }
    }
    let mut rows: Vec<LayerRow> = units
        .iter()
        .enumerate()
        .map(|(l, u)| {
            let conv = if u.kernel == 1 {
                "pw1x1".to_string()
            } else {
                format!("conv{0}x{0}", u.kernel)
            };
            let kind = match u.post {
                Post::None => conv,
                Post::MaxPool => format!("{conv} + maxpool"),
                Post::Depthwise { stride: 1 } => format!("{conv} + dw3x3"),
                Post::Depthwise { stride } => format!("{conv} + dw3x3/s{stride}"),
            };
            LayerRow {
                name: l.to_string(),
                kind,
                cin: u.cin,
                cout: u.cout,
                in_hw: u.in_hw,
                out_hw: u.out_hw,
                params: params[l],
            }
        })
        .collect();
    let head = arch.head();
    let last = units.last().map_or((1, 1), |u| u.out_hw);
    let kind = match arch.family {
        Family::Vgg19 => "flatten + linear",
        Family::MobilenetV1 => "avgpool + linear",
    };
    rows.push(LayerRow {
        name: "head".into(),
        kind: kind.into(),
        cin: head.features(),
        cout: head.classes,
        in_hw: last,
        out_hw: (1, 1),
        params: head_params,
    });
    rows
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn widths_list(arch: &Arch) -> String {
    arch.widths
        .iter()
        .map(|w| w.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The human-readable report: a header line, the per-layer table, totals.
pub fn render_table(arch: &Arch) -> String {
    let [c, h, w] = arch.input;
    let mut out = format!(
        "{}, input {c}x{h}x{w}, {} classes\n",
        arch.family.name(),
        arch.classes
    );
    out.push_str(&format!(
        "{:>5}  {:<20} {:>14}  {:<16} {:>12}\n",
        "layer", "kind", "channels", "spatial", "params"
    ));
    for r in layer_rows(arch) {
        let channels = format!("{} -> {}", r.cin, r.cout);
        let spatial = format!(
            "{}x{} -> {}x{}",
            r.in_hw.0, r.in_hw.1, r.out_hw.0, r.out_hw.1
        );
        out.push_str(&format!(
            "{:>5}  {:<20} {:>14}  {:<16} {:>12}\n",
            r.name,
            r.kind,
            channels,
            spatial,
            thousands(r.params)
        ));
    }
    out.push_str(&format!("params: {}\n", thousands(arch.params())));
    out.push_str(&format!("MACs:   {}\n", thousands(arch.macs())));
    out.push_str(&format!("widths: {}\n", widths_list(arch)));
    out
}

/// The JSON report: `params`, `macs`, `widths`, `arch` and the per-layer rows.
pub fn to_json(arch: &Arch) -> Result<serde_json::Value> {
    let layers: Vec<serde_json::Value> = layer_rows(arch)
        .into_iter()
        .map(|r| {
            json!({
                // A number for growable layers, "head" for the classifier.
                "layer": r.name.parse::<usize>().map_or_else(|_| json!(r.name), |l| json!(l)),
                "kind": r.kind,
                "in_channels": r.cin,
                "out_channels": r.cout,
                "in_hw": [r.in_hw.0, r.in_hw.1],
                "out_hw": [r.out_hw.0, r.out_hw.1],
                "params": r.params,
            })
        })
        .collect();
    Ok(json!({
        "params": arch.params(),
        "macs": arch.macs(),
        "widths": arch.widths,
        "arch": serde_json::to_value(arch)?,
        "layers": layers,
    }))
}

/// Runs `sprout info`.
pub fn run(args: &InfoArgs) -> Result<()> {
    let arch = arch_from_flags(
        &args.arch,
        args.width,
        args.widths.as_deref(),
        &args.input,
        args.classes,
        args.arch_file.as_deref(),
    )?;
    if args.json {
        println!("{}", serde_json::to_string(&to_json(&arch)?)?);
    } else {
        print!("{}", render_table(&arch));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::write_atomic;
    use clap::Parser;
    use sprout_lab::scratch::TempDir;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        info: InfoArgs,
    }

    fn parse(args: &[&str]) -> Result<Arch> {
        let cli = Cli::try_parse_from(std::iter::once("info").chain(args.iter().copied()))?;
        let a = cli.info;
        arch_from_flags(
            &a.arch,
            a.width,
            a.widths.as_deref(),
            &a.input,
            a.classes,
            a.arch_file.as_deref(),
        )
    }

    #[test]
    fn defaults_are_the_seeds() {
        assert_eq!(
            parse(&[]).unwrap(),
            Arch::vgg19(16, [1, 32, 32], 10).unwrap()
        );
        assert_eq!(
            parse(&["--arch", "mobilenet-v1"]).unwrap(),
            Arch::mobilenet_v1(32, [1, 32, 32], 10).unwrap()
        );
        assert_eq!(
            parse(&[
                "--arch",
                "vgg19",
                "--width",
                "64",
                "--input",
                "3x32x32",
                "--classes",
                "100"
            ])
            .unwrap(),
            Arch::vgg19(64, [3, 32, 32], 100).unwrap()
        );
    }

    #[test]
    fn explicit_widths() {
        let list = "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16";
        let a = parse(&["--widths", list]).unwrap();
        assert_eq!(a.widths, (1..=16).collect::<Vec<_>>());
        let m = parse(&["--widths", "8,8,8"]).unwrap_err().to_string();
        assert_eq!(
            m,
            "--widths: expected 16 comma-separated widths for vgg19, got 3"
        );
        let m = parse(&["--arch", "mobilenet-v1", "--widths", list])
            .unwrap_err()
            .to_string();
        assert_eq!(
            m,
            "--widths: expected 14 comma-separated widths for mobilenet-v1, got 16"
        );
        let m = parse(&["--widths", "8,x,8"]).unwrap_err().to_string();
        assert!(m.starts_with("--widths: 'x'"), "{m}");
        // clap refuses both at once.
        assert!(parse(&["--widths", list, "--width", "3"]).is_err());
        let m = arch_from_flags("vgg19", Some(3), Some(list), "1x32x32", 10, None)
            .unwrap_err()
            .to_string();
        assert!(m.contains("--width and --widths"), "{m}");
    }

    #[test]
    fn bad_flags_name_the_flag() {
        let m = parse(&["--arch", "resnet"]).unwrap_err().to_string();
        assert_eq!(
            m,
            "--arch: unknown architecture 'resnet' (expected vgg19 or mobilenet-v1)"
        );
        for bad in ["32x32", "1x32x", "ax32x32", "0x32x32", "1x32x32x1"] {
            let m = parse(&["--input", bad]).unwrap_err().to_string();
            assert!(
                m.starts_with("--input: expected CxHxW, e.g. 1x32x32"),
                "{m}"
            );
        }
        assert!(parse(&["--width", "0"])
            .unwrap_err()
            .to_string()
            .contains("--width"));
        let m = parse(&["--input", "1x8x8"]).unwrap_err().to_string();
        assert!(m.contains("too small"), "{m}");
        let m = parse(&["--classes", "1"]).unwrap_err().to_string();
        assert!(m.contains("classes"), "{m}");
    }

    #[test]
    fn arch_file_overrides_flags() {
        let dir = TempDir::new("info");
        let path = dir.0.join("arch.json");
        let arch = Arch::new(Family::MobilenetV1, [3, 32, 32], 100, (1..=14).collect()).unwrap();
        write_atomic(&path, serde_json::to_string(&arch).unwrap().as_bytes()).unwrap();
        let p = path.to_str().unwrap();
        assert_eq!(parse(&["--arch-file", p, "--width", "5"]).unwrap(), arch);
        write_atomic(&path, b"[]").unwrap();
        let m = parse(&["--arch-file", p]).unwrap_err().to_string();
        assert!(m.starts_with(p), "{m}");
    }

    #[test]
    fn rows_add_up_to_params() {
        for arch in [
            Arch::vgg19(16, [1, 32, 32], 10).unwrap(),
            Arch::mobilenet_v1(32, [3, 32, 32], 10).unwrap(),
            Arch::new(Family::Vgg19, [3, 32, 32], 7, (1..=16).collect()).unwrap(),
        ] {
            let rows = layer_rows(&arch);
            assert_eq!(rows.len(), arch.layers() + 1);
            assert_eq!(rows.iter().map(|r| r.params).sum::<u64>(), arch.params());
        }
        let rows = layer_rows(&Arch::vgg19(16, [1, 32, 32], 10).unwrap());
        // conv 16*1*9 + BN 2*16.
        assert_eq!(rows[0].params, 176);
        assert_eq!(rows[0].kind, "conv3x3");
        assert_eq!(rows[1].kind, "conv3x3 + maxpool");
        assert_eq!((rows[1].in_hw, rows[1].out_hw), ((32, 32), (16, 16)));
        assert_eq!(rows[16].params, 16 * 10 + 10);
        let rows = layer_rows(&Arch::mobilenet_v1(32, [3, 32, 32], 10).unwrap());
        // conv 32*3*9 + BN 64 + depthwise 32*9 + BN 64.
        assert_eq!(rows[0].params, 864 + 64 + 288 + 64);
        assert_eq!(rows[0].kind, "conv3x3 + dw3x3");
        assert_eq!(rows[1].kind, "pw1x1 + dw3x3/s2");
        assert_eq!(rows[13].kind, "pw1x1");
    }

    #[test]
    fn reports() {
        let arch = Arch::vgg19(16, [1, 32, 32], 10).unwrap();
        let t = render_table(&arch);
        assert_eq!(t.lines().count(), 1 + 1 + 17 + 3);
        assert!(
            t.contains(&format!("params: {}", thousands(arch.params()))),
            "{t}"
        );
        assert!(t.contains("widths: 16,16,16"), "{t}");
        let j = to_json(&arch).unwrap();
        assert_eq!(j["params"], arch.params());
        assert_eq!(j["macs"], arch.macs());
        assert_eq!(j["widths"].as_array().unwrap().len(), 16);
        assert_eq!(j["layers"][3]["layer"], 3);
        assert_eq!(j["layers"][16]["layer"], "head");
        assert_eq!(j["layers"][1]["out_hw"], serde_json::json!([16, 16]));
        let back: Arch = serde_json::from_value(j["arch"].clone()).unwrap();
        assert_eq!(back, arch);
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(20_035_018), "20,035,018");
    }
}
