//! What an image's layers hold: each layer's tar read for its entries
//! ([`read_layer`]), the layers stacked as a container sees them
//! ([`Stack`]), and what each layer adds, changes and deletes, with the
//! bytes wasted: file contents a later layer overwrites or deletes, which
//! every pull still downloads ([`analyse`]).
//!
//! Sizes are the sizes of regular files' contents in the tars (a hard link
//! counts 0, its contents are its target's). The efficiency is that of
//! dive's spirit: the share of all the file bytes the layers carry that
//! the final filesystem still shows, `(total - wasted) / total`.
//!
//! [`StoreFiles`] reads files of a store image through the stack (for
//! `kiln explain`'s look into entrypoint scripts).

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::io::Read;

use kiln_layers::oci::History;
use kiln_layers::{Descriptor, Image, Store};
use serde::Serialize;

use crate::explain::pid1::ImageFiles;

/// A layer or image that could not be read, named.
#[derive(Debug, thiserror::Error)]
#[error("image {image}: layer {digest}: {message}")]
pub struct LayerError {
    pub image: String,
    pub digest: String,
    pub message: String,
}

/// What a tar entry is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "type", content = "target")]
pub enum Kind {
    File,
    Dir,
    Symlink(String),
    Hardlink(String),
    Other,
}

impl Kind {
    fn name(&self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "dir",
            Kind::Symlink(_) => "symlink",
            Kind::Hardlink(_) => "hardlink",
            Kind::Other => "other",
        }
    }
}

/// One entry of a layer (not a whiteout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the root, no leading `./` or `/` (`etc/passwd`).
    pub path: String,
    pub kind: Kind,
    /// Content bytes of a regular file; 0 otherwise.
    pub size: u64,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
}

/// A layer's entries, whiteouts (`.wh.NAME`: the path it deletes) and
/// opaque directories (`.wh..wh..opq`: the directory whose lower
/// contents it hides).
#[derive(Debug, Clone, Default)]
pub struct Layer {
    pub entries: Vec<Entry>,
    pub whiteouts: Vec<String>,
    pub opaque: Vec<String>,
}

/// `./a/b/` → `a/b`.
fn clean(path: &str) -> String {
    path.trim_start_matches("./")
        .trim_start_matches('/')
        .trim_end_matches('/')
        .to_string()
}

/// Reads a layer's (uncompressed) tar.
pub fn read_layer(reader: impl Read) -> std::io::Result<Layer> {
    let mut archive = tar::Archive::new(reader);
    let mut layer = Layer::default();
    for entry in archive.entries()? {
        let entry = entry?;
        let header = entry.header();
        let path = clean(&String::from_utf8_lossy(&entry.path_bytes()));
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (d.to_string(), n),
            None => (String::new(), path.as_str()),
        };
        if name == ".wh..wh..opq" {
            layer.opaque.push(dir);
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            layer.whiteouts.push(join(&dir, hidden));
            continue;
        }
        if path.is_empty() {
            continue;
        }
        let link = || {
            entry
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned())
                .unwrap_or_default()
        };
        let kind = match header.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => Kind::File,
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Symlink => Kind::Symlink(link()),
            tar::EntryType::Link => Kind::Hardlink(clean(&link())),
            _ => Kind::Other,
        };
        let size = if kind == Kind::File { entry.size() } else { 0 };
        layer.entries.push(Entry {
            path,
            kind,
            size,
            mode: header.mode().unwrap_or(0) & 0o7777,
            uid: header.uid().unwrap_or(0),
            gid: header.gid().unwrap_or(0),
        });
    }
    Ok(layer)
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Reads every layer of a store image, bottom first.
pub fn read_image_layers(
    store: &Store,
    image: &Image,
    name: &str,
) -> Result<Vec<(Descriptor, Layer)>, LayerError> {
    let layers = image.layers().map_err(|e| LayerError {
        image: name.to_string(),
        digest: image.manifest_descriptor.digest.to_string(),
        message: e.to_string(),
    })?;
    let mut out = Vec::with_capacity(layers.len());
    for (desc, _) in layers {
        let error = |message: String| LayerError {
            image: name.to_string(),
            digest: desc.digest.to_string(),
            message,
        };
        let blob = store
            .open_blob(&desc.digest)
            .map_err(|e| error(e.to_string()))?;
        let reader = kiln_layers::compress::decompress(blob).map_err(|e| error(e.to_string()))?;
        let layer = read_layer(reader).map_err(|e| error(format!("reading the tar: {e}")))?;
        out.push((desc, layer));
    }
    Ok(out)
}

/// A path as the stacked layers show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visible {
    /// The layer whose entry it is.
    pub layer: usize,
    pub entry: Entry,
}

/// The layers stacked: every visible path.
#[derive(Debug, Clone, Default)]
pub struct Stack {
    pub paths: BTreeMap<String, Visible>,
}

impl Stack {
    /// Removes `path` and everything under it; what was removed.
    fn remove_tree(&mut self, path: &str) -> Vec<Visible> {
        let mut removed: Vec<Visible> = self.paths.remove(path).into_iter().collect();
        removed.extend(self.remove_below(path));
        removed
    }

    /// Removes everything under the directory `dir` (`""`: the root).
    fn remove_below(&mut self, dir: &str) -> Vec<Visible> {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let keys: Vec<String> = self
            .paths
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        keys.into_iter()
            .filter_map(|k| self.paths.remove(&k))
            .collect()
    }

    /// Resolves symlinks in `path` (absolute), as a container's root would.
    pub fn resolve(&self, path: &str) -> Option<String> {
        let mut pending: Vec<String> = clean(path).split('/').rev().map(str::to_string).collect();
        let mut resolved: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(part) = pending.pop() {
            match part.as_str() {
                "" | "." => continue,
                ".." => {
                    resolved.pop();
                    continue;
                }
                _ => {}
            }
            resolved.push(part);
            let here = resolved.join("/");
            if let Some(Visible {
                entry:
                    Entry {
                        kind: Kind::Symlink(target),
                        ..
                    },
                ..
            }) = self.paths.get(&here)
            {
                hops += 1;
                if hops > 40 {
                    return None;
                }
                resolved.pop();
                if target.starts_with('/') {
                    resolved.clear();
                }
                pending.extend(target.split('/').rev().map(str::to_string));
            }
        }
        Some(resolved.join("/"))
    }
}

/// A file a layer adds, changes or deletes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub path: String,
    /// `file`, `dir`, `symlink`, `hardlink`, `other`; for a deletion
    /// what was deleted (`opaque`: a directory's lower contents).
    pub kind: &'static str,
    /// The file's size; for a deletion, the bytes it hid.
    pub size: u64,
}

/// Bytes a later layer made dead weight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Waste {
    pub path: String,
    /// The layer holding the bytes.
    pub layer: usize,
    pub size: u64,
    /// The layer that overwrote or deleted them.
    pub by_layer: usize,
    /// `overwritten` or `deleted`.
    pub how: &'static str,
}

/// One layer of the analysis.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    pub index: usize,
    /// The blob's digest and size as stored.
    pub digest: String,
    pub blob_size: u64,
    /// The bytes of the files in it.
    pub size: u64,
    /// The history entry that made it.
    pub history: Option<usize>,
    pub created_by: Option<String>,
    pub added: Vec<Change>,
    pub changed: Vec<Change>,
    pub deleted: Vec<Change>,
    /// Bytes of this layer that later layers overwrite or delete.
    pub wasted_bytes: u64,
}

/// The whole image.
#[derive(Debug, Clone, Serialize)]
pub struct Analysis {
    pub layers: Vec<LayerReport>,
    /// The bytes of all files of all layers.
    pub total_bytes: u64,
    pub wasted_bytes: u64,
    /// `wasted_bytes` as a percentage of `total_bytes`.
    pub wasted_percent: f64,
    /// `(total_bytes - wasted_bytes) / total_bytes` (1 when there are none).
    pub efficiency: f64,
    /// Every piece of waste, largest first.
    pub wasted: Vec<Waste>,
}

/// Stacks the layers (bottom first), recording what each does.
pub fn analyse(history: &[History], layers: &[(Descriptor, Layer)]) -> (Analysis, Stack) {
    let mut stack = Stack::default();
    let mut wasted: Vec<Waste> = Vec::new();
    let history = layer_history(history);
    let mut reports = Vec::with_capacity(layers.len());
    for (index, (desc, layer)) in layers.iter().enumerate() {
        let mut report = LayerReport {
            index,
            digest: desc.digest.to_string(),
            blob_size: desc.size,
            size: layer.entries.iter().map(|e| e.size).sum(),
            history: history.get(index).map(|(i, _)| *i),
            created_by: history.get(index).map(|(_, c)| c.clone()),
            added: Vec::new(),
            changed: Vec::new(),
            deleted: Vec::new(),
            wasted_bytes: 0,
        };
        let mut waste = |removed: &[Visible], path: &str, how| {
            for v in removed.iter().filter(|v| v.entry.size > 0) {
                wasted.push(Waste {
                    path: if v.entry.path.is_empty() {
                        path.to_string()
                    } else {
                        v.entry.path.clone()
                    },
                    layer: v.layer,
                    size: v.entry.size,
                    by_layer: index,
                    how,
                });
            }
            removed.iter().map(|v| v.entry.size).sum::<u64>()
        };
        for path in &layer.whiteouts {
            let removed = stack.remove_tree(path);
            let kind = removed
                .first()
                .map(|v| v.entry.kind.name())
                .unwrap_or("file");
            let size = waste(&removed, path, "deleted");
            report.deleted.push(Change {
                path: path.clone(),
                kind,
                size,
            });
        }
        for dir in &layer.opaque {
            let removed = stack.remove_below(dir);
            let size = waste(&removed, dir, "deleted");
            if !removed.is_empty() {
                report.deleted.push(Change {
                    path: format!("{dir}/"),
                    kind: "opaque",
                    size,
                });
            }
        }
        for entry in &layer.entries {
            let change = Change {
                path: entry.path.clone(),
                kind: entry.kind.name(),
                size: entry.size,
            };
            match stack.paths.get(&entry.path) {
                None => report.added.push(change),
                Some(old) if old.entry.kind == Kind::Dir && entry.kind == Kind::Dir => {
                    let (a, b) = (&old.entry, entry);
                    if (a.mode, a.uid, a.gid) != (b.mode, b.uid, b.gid) {
                        report.changed.push(change);
                    }
                }
                Some(_) => {
                    let removed = if entry.kind == Kind::Dir {
                        stack.paths.remove(&entry.path).into_iter().collect()
                    } else {
                        stack.remove_tree(&entry.path)
                    };
                    waste(&removed, &entry.path, "overwritten");
                    report.changed.push(change);
                }
            }
            stack.paths.insert(
                entry.path.clone(),
                Visible {
                    layer: index,
                    entry: entry.clone(),
                },
            );
        }
        reports.push(report);
    }
    (summarise(reports, wasted), stack)
}

fn summarise(mut layers: Vec<LayerReport>, mut wasted: Vec<Waste>) -> Analysis {
    for w in &wasted {
        if let Some(l) = layers.get_mut(w.layer) {
            l.wasted_bytes += w.size;
        }
    }
    wasted.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.path.cmp(&b.path)));
    let total_bytes: u64 = layers.iter().map(|l| l.size).sum();
    let wasted_bytes: u64 = wasted.iter().map(|w| w.size).sum();
    let (wasted_percent, efficiency) = if total_bytes == 0 {
        (0.0, 1.0)
    } else {
        let share = wasted_bytes as f64 / total_bytes as f64;
        (share * 100.0, 1.0 - share)
    };
    Analysis {
        layers,
        total_bytes,
        wasted_bytes,
        wasted_percent,
        efficiency,
        wasted,
    }
}

/// The history entry (index, `created_by`) of each layer: the entries that
/// are not `empty_layer`, in order.
pub fn layer_history(history: &[History]) -> Vec<(usize, String)> {
    history
        .iter()
        .enumerate()
        .filter(|(_, h)| h.empty_layer != Some(true))
        .map(|(i, h)| (i, h.created_by.clone().unwrap_or_default()))
        .collect()
}

/// Files of a store image, for [`ImageFiles`]: the layers are read (and
/// stacked) the first time a file is asked for.
pub struct StoreFiles<'a> {
    store: &'a Store,
    image: &'a Image,
    name: String,
    stack: OnceCell<Option<(Vec<Descriptor>, Stack)>>,
}

impl<'a> StoreFiles<'a> {
    pub fn new(store: &'a Store, image: &'a Image, name: &str) -> StoreFiles<'a> {
        StoreFiles {
            store,
            image,
            name: name.to_string(),
            stack: OnceCell::new(),
        }
    }

    fn stack(&self) -> Option<&(Vec<Descriptor>, Stack)> {
        self.stack
            .get_or_init(|| {
                let layers = read_image_layers(self.store, self.image, &self.name).ok()?;
                let (_, stack) = analyse(&self.image.config.history, &layers);
                Some((layers.into_iter().map(|(d, _)| d).collect(), stack))
            })
            .as_ref()
    }
}

impl ImageFiles for StoreFiles<'_> {
    fn read_file(&self, path: &str, limit: usize) -> Option<Vec<u8>> {
        let (descs, stack) = self.stack()?;
        let mut path = stack.resolve(path)?;
        let mut visible = stack.paths.get(&path)?;
        if let Kind::Hardlink(target) = &visible.entry.kind {
            path = target.clone();
            visible = stack.paths.get(&path)?;
        }
        if visible.entry.kind != Kind::File {
            return None;
        }
        let desc = descs.get(visible.layer)?;
        let blob = self.store.open_blob(&desc.digest).ok()?;
        let reader = kiln_layers::compress::decompress(blob).ok()?;
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries().ok()? {
            let entry = entry.ok()?;
            if clean(&String::from_utf8_lossy(&entry.path_bytes())) == path {
                let mut bytes = Vec::new();
                entry.take(limit as u64).read_to_end(&mut bytes).ok()?;
                return Some(bytes);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            match data {
                Some(d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(d.len() as u64);
                    h.set_mode(0o644);
                    b.append_data(&mut h, path, *d).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    b.append_data(&mut h, path, &[][..]).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    fn history(layers: usize) -> Vec<History> {
        (0..layers)
            .map(|i| History {
                created_by: Some(format!("step {i}")),
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn overwrites_deletions_and_opaque_dirs() {
        let l0 = tar(&[
            ("a/", None),
            ("a/big", Some(&[0; 1000])),
            ("a/keep", Some(&[0; 10])),
            ("d/", None),
            ("d/x", Some(&[0; 7])),
        ]);
        let l1 = tar(&[("a/big", Some(&[0; 300])), ("a/.wh.keep", Some(&[]))]);
        let l2 = tar(&[
            ("d/.wh..wh..opq", Some(&[])),
            ("d/y", Some(&[0; 5])),
            ("a/.wh.big", Some(&[])),
        ]);
        let layers: Vec<(Descriptor, Layer)> = [l0, l1, l2]
            .iter()
            .map(|t| {
                (
                    Descriptor::new("l", kiln_layers::Digest::of(t), t.len() as u64),
                    read_layer(&t[..]).unwrap(),
                )
            })
            .collect();
        let (a, stack) = analyse(&history(3), &layers);
        assert_eq!(a.total_bytes, 1000 + 10 + 7 + 300 + 5);
        assert_eq!(a.wasted_bytes, 1000 + 10 + 300 + 7);
        assert_eq!(a.layers[0].wasted_bytes, 1017);
        assert_eq!(a.layers[1].wasted_bytes, 300);
        assert_eq!(
            a.layers[1].changed,
            [Change {
                path: "a/big".into(),
                kind: "file",
                size: 300
            }]
        );
        assert_eq!(
            a.layers[1].deleted,
            [Change {
                path: "a/keep".into(),
                kind: "file",
                size: 10
            }]
        );
        assert_eq!(a.layers[2].deleted.len(), 2);
        assert_eq!(
            a.layers[2].added,
            [Change {
                path: "d/y".into(),
                kind: "file",
                size: 5
            }]
        );
        assert_eq!(a.wasted[0].size, 1000);
        assert_eq!((a.wasted[0].by_layer, a.wasted[0].how), (1, "overwritten"));
        let visible: Vec<&String> = stack.paths.keys().collect();
        assert_eq!(visible, ["a", "d", "d/y"]);
        assert_eq!(a.layers[1].history, Some(1));
    }

    #[test]
    fn symlinks_resolve_through_directories() {
        let mut stack = Stack::default();
        let entry = |path: &str, kind: Kind| Visible {
            layer: 0,
            entry: Entry {
                path: path.into(),
                kind,
                size: 0,
                mode: 0,
                uid: 0,
                gid: 0,
            },
        };
        stack
            .paths
            .insert("bin".into(), entry("bin", Kind::Symlink("usr/bin".into())));
        stack.paths.insert(
            "usr/bin/sh".into(),
            entry("usr/bin/sh", Kind::Symlink("dash".into())),
        );
        stack.paths.insert(
            "app".into(),
            entry("app", Kind::Symlink("/bin/../etc/x".into())),
        );
        assert_eq!(stack.resolve("/bin/sh").unwrap(), "usr/bin/dash");
        // `..` after a symlink climbs from where it points, as the kernel does.
        assert_eq!(stack.resolve("/app").unwrap(), "usr/etc/x");
    }
}
