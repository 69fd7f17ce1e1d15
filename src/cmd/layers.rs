//! `kiln history IMAGE` (as `docker history`) and `kiln layers IMAGE`:
//! what each layer of a store image holds, what it adds, changes and
//! deletes, and the bytes later layers waste; `--max-wasted` fails a CI
//! job whose image wastes more than it allows.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use kiln_builder::image_layers::{analyse, layer_history, read_image_layers, Analysis, Change};
use kiln_layers::{Image, Platform, Store};

use crate::cmd::check::write_stdout;
use crate::progress::human_bytes;
use crate::settings::{GlobalSettings, Reads};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LayersFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum LayersCommand {
    /// Show an image's history, newest first, as `docker history` does:
    /// the instruction behind each entry and the size of the layer it made.
    History(HistoryArgs),
    /// Show what each layer of an image adds, changes and deletes, and the
    /// bytes wasted: file contents a later layer overwrites or deletes,
    /// which every pull still downloads. Efficiency is the share of the
    /// layers' file bytes the final filesystem still shows.
    ///
    /// Exits 1 when --max-wasted is exceeded.
    Layers(LayersArgs),
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Show `created_by` in full (cut to 45 characters otherwise).
    #[arg(long)]
    no_trunc: bool,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Platform to pick from a multi-platform image (os/arch[/variant]).
    #[arg(long)]
    platform: Option<String>,
    /// Image in the store (reference, id or digest).
    image: String,
}

/// How many of the largest wasted files the text lists without `--top`.
const DEFAULT_TOP: usize = 10;

#[derive(Debug, Args)]
pub struct LayersArgs {
    #[arg(long, value_enum, default_value_t = LayersFormat::Text)]
    format: LayersFormat,
    /// How many of the largest wasted files the text lists (default: 10;
    /// the JSON lists them all).
    #[arg(long, value_name = "N")]
    top: Option<usize>,
    /// Show each layer's changes as a tree of files.
    #[arg(long)]
    tree: bool,
    /// Fail (exit 1) when more is wasted: bytes (`10MB`, `512KiB`, `1000`)
    /// or a percentage of the layers' file bytes (`5%`).
    #[arg(long, value_name = "BYTES|PERCENT")]
    max_wasted: Option<String>,
    #[arg(long)]
    platform: Option<String>,
    /// Image in the store (reference, id or digest).
    image: String,
}

impl LayersCommand {
    /// The global settings this command reads (see [`Reads`]).
    pub fn reads(&self) -> Reads {
        // Layers a build left in a registry are fetched first.
        Reads::BOTH
    }

    pub fn run(self, settings: &GlobalSettings) -> anyhow::Result<ExitCode> {
        match self {
            LayersCommand::History(args) => history(&args, settings),
            LayersCommand::Layers(args) => layers(&args, settings),
        }
    }
}

/// The store image `query` names.
fn open_image(
    settings: &GlobalSettings,
    query: &str,
    platform: &Option<String>,
) -> anyhow::Result<(Store, Image)> {
    let asked = platform.is_some();
    let platform = match platform {
        Some(p) => Platform::parse(p).with_context(|| format!("--platform {p}"))?,
        None => Platform::host(),
    };
    if !Store::exists_at(&settings.root) {
        bail!(
            "image {query} not found: there is no store at {}",
            settings.root.display()
        );
    }
    let store = Store::open(&settings.root)
        .with_context(|| format!("opening the store at {}", settings.root.display()))?;
    let found = store.find(query, &platform)?;
    let Some(first) = found.first() else {
        bail!("image {query} not found");
    };
    let image = match asked {
        true => store.read_image_for(&first.descriptor, &platform, query)?,
        false => store.read_image(&first.descriptor, &platform)?,
    };
    // Layers a build left where they are (docs/cache.md, "Lazy") are
    // read here: fetched first.
    crate::cmd::fetch_missing_layers(&store, &image, settings)?;
    Ok((store, image))
}

/// The bytes of the files in each layer, bottom first (as `kiln layers`
/// counts them; Docker shows the size of the layer's directory).
fn layer_sizes(store: &Store, image: &Image, query: &str) -> anyhow::Result<Vec<u64>> {
    let layers = read_image_layers(store, image, query)?;
    Ok(layers
        .iter()
        .map(|(_, l)| l.entries.iter().map(|e| e.size).sum())
        .collect())
}

fn history(args: &HistoryArgs, settings: &GlobalSettings) -> anyhow::Result<ExitCode> {
    let (store, image) = open_image(settings, &args.image, &args.platform)?;
    let sizes = layer_sizes(&store, &image, &args.image)?;
    let layer_of: BTreeMap<usize, usize> = layer_history(&image.config.history)
        .iter()
        .enumerate()
        .map(|(layer, (entry, _))| (*entry, layer))
        .collect();
    let entries = &image.config.history;
    let rows: Vec<serde_json::Value> = entries
        .iter()
        .enumerate()
        .rev()
        .map(|(index, h)| {
            let layer = layer_of.get(&index).copied();
            serde_json::json!({
                "index": index,
                "id": if index + 1 == entries.len() { image.id().to_string() } else { "<missing>".to_string() },
                "created": h.created,
                "created_by": h.created_by.clone().unwrap_or_default(),
                "size": layer.and_then(|l| sizes.get(l)).copied().unwrap_or(0),
                "comment": h.comment.clone().unwrap_or_default(),
                "empty_layer": h.empty_layer == Some(true),
                "layer": layer.and_then(|l| image.manifest.layers.get(l)).map(|d| d.digest.to_string()),
            })
        })
        .collect();
    if args.format == Format::Json {
        write_stdout(&(serde_json::to_string_pretty(&rows)? + "\n"))?;
        return Ok(ExitCode::SUCCESS);
    }
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            let text = |k: &str| r[k].as_str().unwrap_or("").to_string();
            let id = text("id");
            let created_by = text("created_by").replace('\n', " ");
            [
                // docker history: 12 hex digits, the whole id under
                // --no-trunc.
                if id == "<missing>" || args.no_trunc {
                    id
                } else {
                    id.trim_start_matches("sha256:").chars().take(12).collect()
                },
                crate::cmd::image::ago(r["created"].as_str()),
                if args.no_trunc {
                    created_by
                } else {
                    ellipsis(&created_by, 45)
                },
                human_bytes(r["size"].as_u64().unwrap_or(0)),
                text("comment"),
            ]
        })
        .collect();
    write_stdout(&table(
        &["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"],
        &cells,
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// `docker history`'s cut: at most `n` characters, the last `…`.
fn ellipsis(text: &str, n: usize) -> String {
    if text.chars().count() <= n {
        return text.to_string();
    }
    let mut s: String = text.chars().take(n - 1).collect();
    s.push('…');
    s
}

/// Columns separated by three spaces, as `docker history` prints them.
fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                s.push_str(cell);
            } else {
                let _ = write!(s, "{cell:<w$}   ");
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

fn layers(args: &LayersArgs, settings: &GlobalSettings) -> anyhow::Result<ExitCode> {
    let limit = args.max_wasted.as_deref().map(parse_limit).transpose()?;
    if matches!(args.format, LayersFormat::Json) && args.top.is_some() {
        bail!("--top shortens the text's list of the largest waste; --format json lists it whole");
    }
    if matches!(args.format, LayersFormat::Json) && args.tree {
        bail!("--tree draws the text's layers as trees; --format json lists each layer's changes (added, changed, deleted) already");
    }
    let (store, image) = open_image(settings, &args.image, &args.platform)?;
    let read = read_image_layers(&store, &image, &args.image)?;
    let (analysis, _) = analyse(&image.config.history, &read);
    match args.format {
        LayersFormat::Json => {
            let mut value = serde_json::to_value(&analysis)?;
            if let Some(map) = value.as_object_mut() {
                map.insert("image".into(), serde_json::json!(args.image));
                map.insert(
                    "digest".into(),
                    serde_json::json!(image.manifest_descriptor.digest),
                );
            }
            write_stdout(&(serde_json::to_string_pretty(&value)? + "\n"))?;
        }
        LayersFormat::Text => write_stdout(&layers_text(&analysis, args))?,
    }
    if let Some(limit) = limit {
        let (over, allowed) = match limit {
            Limit::Bytes(b) => (
                analysis.wasted_bytes > b,
                format!("{} ({b} bytes)", human_bytes(b)),
            ),
            Limit::Percent(p) => (analysis.wasted_percent > p, format!("{p}%")),
        };
        if over {
            eprintln!(
                "error: {} wastes {} ({} bytes, {:.1}% of its layers' file bytes): more than --max-wasted {allowed}",
                args.image,
                human_bytes(analysis.wasted_bytes),
                analysis.wasted_bytes,
                analysis.wasted_percent
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A `--max-wasted` value.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Limit {
    Bytes(u64),
    Percent(f64),
}

/// `5%`, `1000`, `10MB`, `512KiB`, `1.5GB`.
fn parse_limit(text: &str) -> anyhow::Result<Limit> {
    let bad = || {
        anyhow::anyhow!(
            "--max-wasted {text:?}: not a size (10MB, 512KiB, 1000) or a percentage (5%)"
        )
    };
    if let Some(p) = text.trim().strip_suffix('%') {
        // (f64 parsing takes NaN, inf and negatives: no share of a size.)
        let p: f64 = p.trim().parse().map_err(|_| bad())?;
        if !(0.0..=100.0).contains(&p) {
            return Err(anyhow::anyhow!(
                "--max-wasted {text:?}: a percentage is from 0% to 100%"
            ));
        }
        return Ok(Limit::Percent(p));
    }
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let number: f64 = t[..split].parse().map_err(|_| bad())?;
    let scale: f64 = match t[split..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    Ok(Limit::Bytes((number * scale) as u64))
}

/// The per-layer summary, the totals, the largest waste, and (`--tree`)
/// each layer's changes as a tree.
fn layers_text(a: &Analysis, args: &LayersArgs) -> String {
    let mut out = String::new();
    let cells: Vec<[String; 5]> = a
        .layers
        .iter()
        .map(|l| {
            [
                l.index.to_string(),
                human_bytes(l.size),
                format!(
                    "+{} ~{} -{}",
                    l.added.len(),
                    l.changed.len(),
                    l.deleted.len()
                ),
                human_bytes(l.wasted_bytes),
                ellipsis(
                    &l.created_by.clone().unwrap_or_default().replace('\n', " "),
                    60,
                ),
            ]
        })
        .collect();
    out.push_str(&table(
        &["LAYER", "SIZE", "FILES", "WASTED", "CREATED BY"],
        &cells,
    ));
    let _ = writeln!(
        out,
        "\ntotal: {} in {} layers; wasted: {} ({} bytes, {:.1}%); efficiency: {:.1}%",
        human_bytes(a.total_bytes),
        a.layers.len(),
        human_bytes(a.wasted_bytes),
        a.wasted_bytes,
        a.wasted_percent,
        a.efficiency * 100.0
    );
    let top = args.top.unwrap_or(DEFAULT_TOP);
    if !a.wasted.is_empty() && top > 0 {
        let _ = writeln!(out, "\nlargest waste (top {}):", top.min(a.wasted.len()));
        for w in a.wasted.iter().take(top) {
            let _ = writeln!(
                out,
                "  {:>10}  /{}  layer {}, {} by layer {}",
                human_bytes(w.size),
                w.path,
                w.layer,
                w.how,
                w.by_layer
            );
        }
    }
    if args.tree {
        for l in &a.layers {
            let _ = writeln!(
                out,
                "\nlayer {}: {}",
                l.index,
                ellipsis(
                    &l.created_by.clone().unwrap_or_default().replace('\n', " "),
                    80
                )
            );
            out.push_str(&tree(l));
        }
    }
    out
}

/// A layer's changes under their directories: `+` added, `~` changed,
/// `-` deleted.
fn tree(layer: &kiln_builder::image_layers::LayerReport) -> String {
    let mut marked: Vec<(&str, &Change)> = Vec::new();
    marked.extend(layer.added.iter().map(|c| ("+", c)));
    marked.extend(layer.changed.iter().map(|c| ("~", c)));
    marked.extend(layer.deleted.iter().map(|c| ("-", c)));
    marked.sort_by(|a, b| a.1.path.cmp(&b.1.path));
    let mut out = String::new();
    let mut open: Vec<&str> = Vec::new();
    for (mark, change) in marked {
        let path = change.path.trim_end_matches('/');
        let parts: Vec<&str> = path.split('/').collect();
        let (dirs, name) = parts.split_at(parts.len() - 1);
        let common = open.iter().zip(dirs).take_while(|(a, b)| a == b).count();
        open.truncate(common);
        for dir in &dirs[common..] {
            let _ = writeln!(out, "  {}{dir}/", "  ".repeat(open.len()));
            open.push(dir);
        }
        let size = if change.size > 0 {
            format!(" ({})", human_bytes(change.size))
        } else {
            String::new()
        };
        let is_dir = change.kind == "dir" || change.kind == "opaque";
        let suffix = if is_dir { "/" } else { "" };
        let indent = "  ".repeat(open.len());
        let _ = writeln!(out, "  {indent}{mark} {}{suffix}{size}", name[0]);
        if is_dir {
            // Its own changes nest under it.
            open.push(name[0]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        assert_eq!(parse_limit("5%").unwrap(), Limit::Percent(5.0));
        assert_eq!(parse_limit("1000").unwrap(), Limit::Bytes(1000));
        assert_eq!(parse_limit("10MB").unwrap(), Limit::Bytes(10_000_000));
        assert_eq!(parse_limit("1KiB").unwrap(), Limit::Bytes(1024));
        assert!(parse_limit("lots").is_err());
        // No share of a size: refused, not a limit that never (NaN, inf)
        // or always (negative) fails.
        for bad in ["NaN%", "inf%", "-5%", "101%"] {
            let err = parse_limit(bad).unwrap_err().to_string();
            assert!(err.contains("from 0% to 100%"), "{bad}: {err}");
        }
        assert_eq!(parse_limit("100%").unwrap(), Limit::Percent(100.0));
    }

    #[test]
    fn cut_like_docker() {
        assert_eq!(ellipsis("abcdef", 4), "abc…");
        assert_eq!(ellipsis("abc", 4), "abc");
    }
}
